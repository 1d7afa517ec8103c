"""On a GPU: the extension's CUDA kernels equal its CPU kernels (and so the references) bit for bit.

Covers the multi-chunk prefix sum of the plan (P > 1024), every copy width (16-byte rows down to odd
2-byte rows and unaligned base pointers), and the bad-mask error from a device mask.  Skipped without CUDA or
without CUDA kernels in vlmo_fast._C.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from vlmo_fast.ops import _ext
from vlmo_fast.ops import packing as pk

from .batches import random_batch

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cuda_extension(monkeypatch):
    if not _ext.available(torch.device("cuda")):
        pytest.skip("vlmo_fast._C has no CUDA kernels in this build")
    monkeypatch.setenv("VLMO_FAST_KERNELS", "auto")


def _to_cpu(layout: pk.PackedLayout) -> dict:
    return {f.name: (v.cpu() if isinstance(v := getattr(layout, f.name), torch.Tensor) else v)
            for f in dataclasses.fields(layout)}


@pytest.mark.parametrize("keep_padded", [False, True])
@pytest.mark.parametrize("P", [1, 64, 3000])
def test_plan_matches_cpu(P, keep_padded):
    b = random_batch(P, 2, torch.float32, image_len=197, Lt=40, min_len=0)
    q = b.padded_len if keep_padded else None
    want = _to_cpu(pk.make_layout(b.lens, 197, q))
    got = pk.make_layout(b.lens.cuda(), 197, q)
    for name, value in _to_cpu(got).items():
        assert (torch.equal(value, want[name]) if isinstance(value, torch.Tensor) else value == want[name]), name
    from_mask = _to_cpu(pk.make_layout_from_mask(b.mask.cuda(), 197, keep_padded))
    for name, value in from_mask.items():
        assert (torch.equal(value, want[name]) if isinstance(value, torch.Tensor) else value == want[name]), name


def test_bad_mask_on_device():
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], device="cuda")
    with pytest.raises(ValueError, match="text mask of sample 1"):
        pk.make_layout_from_mask(mask, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64])
@pytest.mark.parametrize("D", [1, 3, 8, 768])
@pytest.mark.parametrize("keep_padded", [False, True])
def test_movement_matches_cpu(keep_padded, D, dtype):
    b = random_batch(37, D, dtype, image_len=5, Lt=12)
    layout = pk.make_layout(b.lens, 5, b.padded_len if keep_padded else None)
    layout_gpu = pk.make_layout(b.lens.cuda(), 5, b.padded_len if keep_padded else None)
    text, image = b.text.cuda(), b.image.cuda()
    x = pk.pack(b.text, b.image, layout)
    assert torch.equal(pk.pack(text, image, layout_gpu).cpu(), x)
    assert torch.equal(pk.pack_text(text, layout_gpu).cpu(), pk.pack_text(b.text, layout))
    assert torch.equal(pk.unpack(x.cuda(), layout_gpu, 14)[0].cpu(), pk.unpack(x, layout, 14)[0])
    # A view one row in: base pointers lose their 16-byte alignment, the kernels pick a narrower copy.
    shifted = torch.cat([x[:1], x]).cuda()[1:]
    assert torch.equal(pk.unpack(shifted, layout_gpu, 14)[0].cpu(), pk.unpack(x, layout, 14)[0])


def test_gradients_match_cpu():
    b = random_batch(9, 16, torch.bfloat16, image_len=4)
    grads = []
    for device in ("cpu", "cuda"):
        layout = pk.make_layout(b.lens.to(device), 4)
        text = b.text.to(device).requires_grad_()
        image = b.image.to(device).requires_grad_()
        x = pk.pack(text, image, layout)
        cls = x.index_select(0, layout.text_start.long())  # as VLMo.encode reads the [CLS] rows
        loss = (cls.float() ** 2).sum() + (pk.unpack(x, layout, 10)[0].float() ** 3).sum()
        loss.backward()
        grads.append((text.grad.cpu(), image.grad.cpu()))
    for cpu, cuda in zip(*grads):
        assert torch.equal(cpu, cuda)
