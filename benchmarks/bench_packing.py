"""Packing ops: GB/s of the compiled extension (vlmo_fast._C) against the torch references.

Stage-3 shapes: P pairs of one caption (padded to Lt=40, real lengths 8..20) and one 224 px image (Ni=197
tokens), width D=768 (base), fp32.  Work counts the bytes each op must read and write at least: pack reads and
writes every packed row; unpack reads the text rows and writes the padded text (zeros included), its image
part being a view on both paths; the plan reads the lengths and writes the metadata.  On the CPU, pack is
bound by first-touch page faults of its fresh output (as large as a clone of the batch) on both paths.

    pytest benchmarks/bench_packing.py --benchmark-columns=median,rounds
"""
from __future__ import annotations

import pytest
import torch

from vlmo_fast.ops import _ext
from vlmo_fast.ops import packing as pk

LT, NI, D = 40, 197, 768
DTYPE = torch.float32


def _batch(P: int):
    g = torch.Generator().manual_seed(P)
    lens = torch.randint(8, 21, (P,), generator=g)
    text = torch.randn(P, LT, D, generator=g, dtype=DTYPE)
    image = torch.randn(P, NI, D, generator=g, dtype=DTYPE)
    return lens, text, image


def _ops(provider: str):
    if provider == "ext":
        if not _ext.state().loaded:
            pytest.skip(f"extension not loaded: {_ext.state().reason}")
        return {"plan": pk.make_layout, "pack": pk.pack, "pack_text": pk.pack_text, "unpack": pk.unpack}
    return {"plan": pk.make_layout_ref, "pack": pk.pack_ref, "pack_text": pk.pack_text_ref, "unpack": pk.unpack_ref}


@pytest.mark.parametrize("P", [64, 256])
@pytest.mark.parametrize("op", ["plan", "pack", "pack_text", "unpack"])
@pytest.mark.parametrize("provider", ["ext", "ref"])
def test_packing(timed, monkeypatch, provider, op, P):
    monkeypatch.setenv("VLMO_FAST_KERNELS", "auto")
    fns = _ops(provider)
    lens, text, image = _batch(P)
    layout = pk.make_layout_ref(lens, NI)
    es = text.element_size()
    T, Tt = layout.num_rows, layout.num_text_rows
    if op == "plan":
        fn, work = (lambda: fns["plan"](lens, NI)), 4 * (6 * P + T)
    elif op == "pack":
        fn, work = (lambda: fns["pack"](text, image, layout)), 2 * T * D * es
    elif op == "pack_text":
        fn, work = (lambda: fns["pack_text"](text, layout)), 2 * Tt * D * es
    else:
        x = pk.pack_ref(text, image, layout)
        fn, work = (lambda: fns["unpack"](x, layout, LT)), (Tt + P * LT) * D * es  # image rows: a view
    timed(fn, "cpu", work=work, unit="GB/s", rounds=10, warmup=2)
