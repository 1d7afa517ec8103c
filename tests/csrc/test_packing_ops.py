"""The extension's ops are proper torch ops: opcheck passes on each (schema, fake tensors, autograd
registration, AOT dispatch with dynamic shapes), torch.compile(fullgraph=True) traces through pack and unpack
(with the [CLS] rows read as the model reads them) with gradients equal to eager, and gradcheck passes in fp64
on tiny cases."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import EagerAndRecordGraphs

from vlmo_fast.ops import packing as pk

from .batches import random_batch, require_ext

ops = torch.ops.vlmo_fast


@pytest.fixture(autouse=True)
def _extension(monkeypatch):
    require_ext()
    monkeypatch.setenv("VLMO_FAST_KERNELS", "auto")


def _case(dtype=torch.float32, P=4, D=6, image_len=3, keep_padded=False, seed=0):
    b = random_batch(P, D, dtype, image_len, seed=seed, Lt=6)
    layout = pk.make_layout(b.lens, image_len, b.padded_len if keep_padded else None)
    return b, layout


def _opcheck_cases():
    b, layout = _case()
    meta = (layout.text_start, layout.text_q_len, layout.image_start)
    x = pk.pack_ref(b.text, b.image, layout)
    lens32 = b.lens.to(torch.int32)
    return {
        "mask_lengths": [(b.mask,), (b.mask.to(torch.uint8),)],
        "pack_plan": [(lens32, 3, -1), (lens32, 0, 6), (lens32[:0], 3, -1)],
        "plan_row_pair": [(*meta, 3, layout.num_rows)],
        "pack_rows": [(b.text.requires_grad_(), b.image.requires_grad_(), *meta, layout.num_rows),
                      (b.text, None, *meta, layout.num_text_rows)],
        "unpack_rows": [(x.requires_grad_(), *meta, 6, 3), (x[: layout.num_text_rows], *meta, 7, 0)],
    }


@pytest.mark.parametrize("name", ["mask_lengths", "pack_plan", "plan_row_pair", "pack_rows", "unpack_rows"])
def test_opcheck(name):
    for args in _opcheck_cases()[name]:
        torch.library.opcheck(getattr(ops, name).default, args)


def _model(text, image, layout, padded_len):
    x = pk.pack(text, image, layout)
    y = torch.tanh(x) * 2.0
    t, i = pk.unpack(y, layout, padded_len)
    # The [CLS] rows, read as VLMo.encode reads them (rows=cls_rows(layout)): a second gradient into pack's.
    cls = y.index_select(0, layout.text_start.long()) + y.index_select(0, layout.image_start.long())
    return (t.square().sum() + i.sum() + cls.pow(3).sum()), pk.pack_text(t, layout)


@pytest.mark.parametrize("keep_padded", [False, True])
def test_compile_fullgraph_with_gradients(keep_padded):
    b, layout = _case(P=5, D=8, image_len=4, keep_padded=keep_padded, seed=1)
    torch._dynamo.reset()
    compiled = torch.compile(_model, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (_model, compiled):
        text, image = b.text.clone().requires_grad_(), b.image.clone().requires_grad_()
        loss, rows = fn(text, image, layout, b.padded_len)
        loss.backward()
        results.append((loss, rows, text.grad, image.grad))
    for eager, comp in zip(*results):
        assert torch.equal(eager, comp)
    assert results[0][2].abs().sum() > 0

    # The graph holds the extension's ops as single nodes (not the references' index ops).
    recorder = EagerAndRecordGraphs()
    torch._dynamo.reset()
    torch.compile(_model, fullgraph=True, backend=recorder)(b.text, b.image, layout, b.padded_len)
    code = "".join(g.code for g in recorder.graphs)
    for name in ("pack_rows", "unpack_rows"):
        assert f"torch.ops.vlmo_fast.{name}" in code


@pytest.mark.parametrize("keep_padded", [False, True])
def test_gradcheck_fp64(keep_padded):
    b, layout = _case(torch.float64, P=3, D=2, image_len=2, keep_padded=keep_padded, seed=2)
    text, image = b.text.requires_grad_(), b.image.requires_grad_()
    x = pk.pack_ref(b.text, b.image, layout).detach().requires_grad_()
    checks = [
        (lambda t, i: pk.pack(t, i, layout), (text, image)),
        (lambda t: pk.pack_text(t, layout), (text,)),
        (lambda y: pk.unpack(y, layout, b.padded_len + 1), (x,)),
        (lambda y: pk.unpack_text(y, layout, b.padded_len), (x[: layout.num_text_rows].detach().requires_grad_(),)),
    ]
    for fn, inputs in checks:
        assert torch.autograd.gradcheck(fn, inputs, check_backward_ad=True)
        assert torch.autograd.gradgradcheck(fn, inputs)
