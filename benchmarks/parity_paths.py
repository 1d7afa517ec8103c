"""How close each kernel path comes to the official code: the largest absolute error over every output and hidden
state of the official fixtures (no gradients), per path of VLMO_FAST_KERNELS.

    python benchmarks/parity_paths.py [--kernels ref,auto,triton] [--fixtures tiny,small_480]

ref: the torch references; auto: the default dispatch (on a CPU, SDPA for inference); triton: the Triton
kernels (on a CPU under TRITON_INTERPRET=1, set here when no GPU is present).  Prints one JSON line per
(fixture, path): the worst output and its error, and how many outputs are bit-exact.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import FixtureSet, all_outputs, build, fixtures_dir  # noqa: E402


def measure(fx: FixtureSet) -> dict:
    with torch.no_grad():
        out = all_outputs(build(fx), fx, hidden=True)
    errors = {name: (out[name].float() - ref.float()).abs().max().item()
              for name, ref in fx.group("out").items() if name in out}
    worst = max(errors, key=errors.get)
    return {"outputs": len(errors), "bit_exact": sum(e == 0.0 for e in errors.values()), "worst": worst,
            "max_abs_error": errors[worst]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kernels", default="ref,auto,triton")
    p.add_argument("--fixtures", default="tiny,small_480")
    args = p.parse_args()
    root = fixtures_dir()
    if root is None:
        sys.exit("official fixtures not found (VLMO_FAST_FIXTURES or ../shared/fixtures/official)")
    for name in args.fixtures.split(","):
        fx = FixtureSet.load(root, name)
        for kernels in args.kernels.split(","):
            os.environ["VLMO_FAST_KERNELS"] = kernels
            print(json.dumps({"fixture": name, "kernels": kernels, **measure(fx)}), flush=True)


if __name__ == "__main__":
    main()
