"""The full cross product of the attention parity rule (CI runs a covering subset in test_attention.py and
autotune_cases.py): every config each attention autotuner holds x head dims 16-128 x with and without bias x
text-only, image-only, fused and fused-with-padded-text layouts x dtypes, forward and every gradient.

    python -m tests.kernels.attention_sweep [--dtypes fp32,fp16] [--head-dims 16,24,34,64,96,128]

On a machine without a GPU it sets TRITON_INTERPRET=1 and VLMO_FAST_AUTOTUNE_CHECK=1 (so the autotuners hold their
GPU configs) before the kernels are imported; fp32/fp16 only there (the interpreter's bf16 dot is wrong), bf16 too
on a GPU.  Prints one line per case and exits 1 if any case breaks the rule.  Hours on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("VLMO_FAST_AUTOTUNE_CHECK", "1")

from tests.kernels.parity import check_attention  # noqa: E402  (after the switches: kernels read them at import)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (text lengths, image rows, text query rows or None, window, l0)
LAYOUTS = {
    "text-only": ([3, 8, 2, 5], 0, 8, 2, 8),
    "image-only": ([0, 0], 10, None, 3, 8),
    "fused": ([5, 2, 9], 10, None, 3, 9),
    "fused-padded-text": ([2, 6, 3], 5, 6, 2, 8),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="fp32,fp16" + (",bf16" if torch.cuda.is_available() else ""))
    parser.add_argument("--head-dims", default="16,24,34,64,96,128")
    args = parser.parse_args(argv)
    from vlmo_fast.kernels import attention, attention_bwd

    tuners = {"fwd": attention._fwd_kernel, "dq": attention_bwd._dq_kernel, "dkdv": attention_bwd._dkdv_kernel}
    failures = 0
    for dtype_name in args.dtypes.split(","):
        for head_dim in (int(h) for h in args.head_dims.split(",")):
            for kernel, tuner in tuners.items():
                for config in list(tuner.configs):
                    failures += _sweep_config(tuner, config, kernel, DTYPES[dtype_name], head_dim)
    print(f"{failures} failing cases")
    return 1 if failures else 0


def _sweep_config(tuner, config, kernel: str, dtype: torch.dtype, head_dim: int) -> int:
    saved, failures = tuner.configs, 0
    tuner.configs = [config]
    tuner.cache.clear()
    try:
        for name, (text, image, text_q, window, l0) in LAYOUTS.items():
            for bias in (True, False):
                case = f"{kernel} {config.kwargs} {dtype} hd={head_dim} {name} bias={bias}"
                try:
                    check_attention(text, image, text_q, head_dim, dtype, bias=bias, window=window, l0=l0,
                                    device="cuda" if torch.cuda.is_available() else "cpu")
                    print("ok  ", case, flush=True)
                except AssertionError as err:
                    failures += 1
                    print("FAIL", case, err, flush=True)
    finally:
        tuner.configs = saved
        tuner.cache.clear()
    return failures


if __name__ == "__main__":
    sys.exit(main())
