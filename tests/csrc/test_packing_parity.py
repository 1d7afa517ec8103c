"""The extension's packing ops equal their torch references exactly (torch.equal), forward and backward.

Contract: for random batches (text lengths 2..Lt, P from 1 to 64, odd and even row widths, fp32/fp16/bf16/fp64
and int64 token ids), with padding dropped or kept, text-only (no image) and image-only (no text) layouts,
make_layout, make_layout_from_mask, pack, pack_text, unpack and unpack_text give bit-identical
results through vlmo_fast._C and through the *_ref functions, and so do their gradients.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from vlmo_fast.ops import packing as pk

from .batches import random_batch, require_ext

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.fixture(autouse=True)
def _extension(monkeypatch):
    require_ext()
    monkeypatch.setenv("VLMO_FAST_KERNELS", "auto")
    assert pk._use_ext(torch.empty(0)), "the public functions must take the extension path here"


def assert_same_layout(a: pk.PackedLayout, b: pk.PackedLayout) -> None:
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), field.name
        else:
            assert x == y, field.name


def assert_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("keep_padded", [False, True])
@pytest.mark.parametrize("image_len", [0, 5])
@pytest.mark.parametrize("P", [1, 3, 64])
def test_layout_matches_reference(P, image_len, keep_padded):
    b = random_batch(P, 4, torch.float32, image_len, seed=1)
    q = b.padded_len if keep_padded else None
    assert_same_layout(pk.make_layout(b.lens, image_len, q), pk.make_layout_ref(b.lens, image_len, q))
    for mask in (b.mask, b.mask.to(torch.uint8), b.mask.to(torch.int64), b.mask.to(torch.float32)):
        assert_same_layout(pk.make_layout_from_mask(mask, image_len, keep_padded),
                           pk.make_layout_from_mask_ref(mask, image_len, keep_padded))


def test_layout_of_no_pairs():
    lens = torch.zeros(0, dtype=torch.int64)
    assert_same_layout(pk.make_layout(lens, 7), pk.make_layout_ref(lens, 7))
    assert_same_layout(pk.make_layout(lens, 7, 5), pk.make_layout_ref(lens, 7, 5))


@pytest.mark.parametrize("dtype", FLOATS + [torch.int64])
@pytest.mark.parametrize("D", [1, 6, 13])
@pytest.mark.parametrize("keep_padded", [False, True])
@pytest.mark.parametrize("P", [1, 5, 64])
def test_movement_matches_reference(P, keep_padded, D, dtype):
    b = random_batch(P, D, dtype, image_len=3, seed=2)
    layout = pk.make_layout(b.lens, b.image_len, b.padded_len if keep_padded else None)
    x_ref = pk.pack_ref(b.text, b.image, layout)
    x = pk.pack(b.text, b.image, layout)
    assert_equal(x, x_ref)
    assert_equal(pk.pack_text(b.text, layout), pk.pack_text_ref(b.text, layout))
    for got, want in zip(pk.unpack(x, layout, b.padded_len), pk.unpack_ref(x, layout, b.padded_len)):
        assert_equal(got, want)
    rows = x[: layout.num_text_rows]
    for padded_len in (b.padded_len, b.padded_len + 2):
        assert_equal(pk.unpack_text(rows, layout, padded_len), pk.unpack_text_ref(rows, layout, padded_len))


def test_token_ids_without_row_dims():
    """The model packs (P, Lt) token ids: rows with no trailing dims."""
    b = random_batch(6, 1, torch.int64, image_len=0, seed=3)
    ids = b.text[..., 0]
    layout = pk.make_layout(b.lens, 0)
    assert_equal(pk.pack_text(ids, layout), pk.pack_text_ref(ids, layout))
    rows = pk.pack_text(ids, layout)
    assert_equal(pk.unpack_text(rows, layout, b.padded_len), pk.unpack_text_ref(rows, layout, b.padded_len))


@pytest.mark.parametrize("dtype", FLOATS)
def test_text_only_and_image_only(dtype):
    text_only = random_batch(7, 5, dtype, image_len=0, seed=4)
    layout = pk.make_layout(text_only.lens, 0)
    x = pk.pack(text_only.text, None, layout)
    assert_equal(x, pk.pack_ref(text_only.text, None, layout))
    text, image = pk.unpack(x, layout, text_only.padded_len)
    assert image.shape == (7, 0, 5)
    assert_equal(text, pk.unpack_ref(x, layout, text_only.padded_len)[0])

    image_only = random_batch(7, 5, dtype, image_len=4, seed=5)
    layout = pk.make_layout(torch.zeros(7, dtype=torch.int32), 4)
    x = pk.pack(None, image_only.image, layout)
    assert_equal(x, pk.pack_ref(None, image_only.image, layout))
    assert_equal(pk.unpack(x, layout, 0)[1], image_only.image)


def _grads(fn, *inputs):
    """Gradients of sum(out * w) over every output, with fixed random weights w."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(7)
    loss = sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs)
    loss.backward()
    return [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("keep_padded", [False, True])
def test_gradients_match_reference(keep_padded, dtype):
    b = random_batch(9, 7, dtype, image_len=4, seed=6)
    layout = pk.make_layout(b.lens, b.image_len, b.padded_len if keep_padded else None)
    x = pk.pack_ref(b.text, b.image, layout)
    cases = [
        (lambda t, i: pk.pack(t, i, layout), lambda t, i: pk.pack_ref(t, i, layout), (b.text, b.image)),
        (lambda t: pk.pack_text(t, layout), lambda t: pk.pack_text_ref(t, layout), (b.text,)),
        (lambda y: pk.unpack(y, layout, 11), lambda y: pk.unpack_ref(y, layout, 11), (x,)),
        (lambda y: pk.unpack_text(y, layout, 11), lambda y: pk.unpack_text_ref(y, layout, 11),
         (x[: layout.num_text_rows],)),
    ]
    for fn, ref, inputs in cases:
        for got, want in zip(_grads(fn, *inputs), _grads(ref, *inputs)):
            assert_equal(got, want)
