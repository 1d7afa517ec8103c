"""Autocast reaches inside the kernels' custom ops: under torch.autocast the attention and expert-FFN matmuls take
their operands in the autocast dtype (fp32 accumulation in the kernels), while the residual stream stays fp32;
without autocast, fp32 stays fp32 (and IEEE in the kernels: no silent TF32).  Recorded at the kernels' launchers
during a forward and backward of a tiny model with the Triton kernels forced (interpreted on the CPU, fp16: the
interpreter's bf16 dot is wrong, the dtype plumbing is the same)."""
from __future__ import annotations

import pytest
import torch

from vlmo_fast.config import preset
from vlmo_fast.kernels import attention, expert_ffn
from vlmo_fast.model.vlmo import VLMo
from tests.helpers import encode_pair_batch


def _record(monkeypatch) -> list[tuple[str, tuple[torch.dtype, ...]]]:
    """Wrap the launchers the custom ops call; returns the list they append (name, operand dtypes) to."""
    seen: list[tuple[str, tuple[torch.dtype, ...]]] = []

    def wrap(module, name, operands):
        real = getattr(module, name)

        def recording(*args, **kwargs):
            seen.append((name, operands(args)))
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, recording)

    def problem(p):  # qkv and the dense bias tiles loaded beside K/V
        return (p.qkv.dtype,) + (() if p.bias is None else (p.bias.dtype,))

    def tensors(*values):  # the dtypes of tensors and of every tensor in a list (each expert's weight)
        return tuple(t.dtype for v in values for t in (v if isinstance(v, list) else [v]))

    wrap(attention, "attention_fwd", lambda a: problem(a[0]))
    wrap(attention, "attention_bwd", lambda a: problem(a[0]) + (a[1].dtype,))  # problem, dout
    wrap(expert_ffn, "grouped_rows_gemm", lambda a: tensors(a[0], a[1]))  # A and every expert's B of the row GEMMs
    wrap(expert_ffn, "grouped_weight_grad", lambda a: tensors(a[0], a[1]))  # both operands of the weight gradients
    return seen


def _step(autocast_dtype: torch.dtype | None):
    cfg = preset("vlmo_tiny_patch16", image_size=32, max_text_len=12, drop_path_rate=0.0)
    torch.manual_seed(0)
    model = VLMo(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids, lens = torch.randint(1, 1000, (2, 12), generator=g), torch.tensor([12, 6], dtype=torch.int32)
    images = torch.randn(2, 3, 32, 32, generator=g)
    with torch.autocast("cpu", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        enc = encode_pair_batch(model, ids, lens, images)
    enc.feats.float().square().mean().backward()
    return enc


@pytest.mark.slow
def test_autocast_half_operands_fp32_residual(monkeypatch):
    monkeypatch.setenv("VLMO_FAST_KERNELS", "triton")
    seen = _record(monkeypatch)
    enc = _step(torch.float16)
    assert enc.hidden.dtype == torch.float32, "the residual stream left fp32"
    names = {name for name, _ in seen}
    assert names == {"attention_fwd", "attention_bwd", "grouped_rows_gemm", "grouped_weight_grad"}, names
    wrong = [(name, dtypes) for name, dtypes in seen if set(dtypes) != {torch.float16}]
    assert not wrong, f"matmul operands outside the autocast dtype: {wrong[:5]}"


@pytest.mark.slow
def test_fp32_stays_fp32(monkeypatch):
    monkeypatch.setenv("VLMO_FAST_KERNELS", "triton")
    seen = _record(monkeypatch)
    _step(None)
    assert seen and all(set(dtypes) == {torch.float32} for _, dtypes in seen)
