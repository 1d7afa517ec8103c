"""Bad input gives clear errors on both paths, and the package falls back to the references (with one
warning) when the extension is missing or stale."""
from __future__ import annotations

import warnings

import pytest
import torch

from vlmo_fast.ops import _ext
from vlmo_fast.ops import packing as pk

from .batches import random_batch, require_ext

PATHS = ["auto", "ref"]


@pytest.mark.parametrize("kernels", PATHS)
@pytest.mark.parametrize("bad_value", [(1, 0, 1), (1, 2, 0), (1, 0.5, 0), (-1, 0, 0)])
def test_bad_mask_names_the_sample(monkeypatch, kernels, bad_value):
    monkeypatch.setenv("VLMO_FAST_KERNELS", kernels)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], list(bad_value), [1, 1, 1]], dtype=torch.float32)
    for m in {mask.to(torch.int64), mask} if float(bad_value[1]).is_integer() else {mask}:
        with pytest.raises(ValueError, match="text mask of sample 2 is not a prefix of ones"):
            pk.make_layout_from_mask(m, 4)


@pytest.mark.parametrize("kernels", PATHS)
def test_bad_lengths(monkeypatch, kernels):
    monkeypatch.setenv("VLMO_FAST_KERNELS", kernels)
    with pytest.raises(ValueError, match="text length 7 exceeds the padded length 5"):
        pk.make_layout(torch.tensor([3, 7, 2]), 4, 5)
    with pytest.raises(ValueError, match="text lengths must be >= 0"):
        pk.make_layout(torch.tensor([3, -1]), 4)
    with pytest.raises(ValueError, match="1-D"):
        pk.make_layout(torch.ones(2, 2, dtype=torch.int64), 4)


@pytest.mark.parametrize("kernels", PATHS)
def test_bad_shapes(monkeypatch, kernels):
    monkeypatch.setenv("VLMO_FAST_KERNELS", kernels)
    b = random_batch(4, 3, torch.float32, image_len=2)
    layout = pk.make_layout(b.lens, 2)
    with pytest.raises(ValueError, match="rows per pair but the layout needs"):
        pk.pack_text(b.text[:, :1], layout)
    with pytest.raises(ValueError, match="image has 3 tokens per pair, the layout 2"):
        pk.pack(b.text, torch.cat([b.image, b.image[:, :1]], 1), layout)
    with pytest.raises(ValueError, match="must be \\(P=4"):
        pk.pack(b.text[:3], b.image, layout)
    x = pk.pack(b.text, b.image, layout)
    with pytest.raises(ValueError, match="padded_len"):
        pk.unpack(x, layout, 1)


def test_kernels_check_metadata_on_cpu():
    """The C++ ops refuse segments outside the tensors (the CUDA kernels skip such rows instead)."""
    require_ext()
    text = torch.randn(2, 4, 3)
    start = torch.tensor([0, 6], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="lies outside the 8 packed rows"):
        torch.ops.vlmo_fast.pack_rows(text, None, start, torch.tensor([4, 4], dtype=torch.int32), start, 8)
    with pytest.raises(RuntimeError, match="outside \\[0, 4\\]"):
        torch.ops.vlmo_fast.pack_rows(text, None, start, torch.tensor([4, 5], dtype=torch.int32), start, 9)
    with pytest.raises(RuntimeError, match="text_start must be int32"):
        torch.ops.vlmo_fast.pack_rows(text, None, start.long(), start, start, 8)


@pytest.fixture
def fresh_loader():
    """Forget the load result before and after, so a simulated failure does not leak into other tests."""
    _ext.reset()
    yield
    _ext.reset()


@pytest.mark.parametrize("failure", ["missing", "stale"])
def test_fallback_without_extension(monkeypatch, fresh_loader, failure):
    if failure == "missing":
        monkeypatch.setattr(_ext, "_locate", lambda: None)
    else:
        require_ext()
        monkeypatch.setitem(_ext.SCHEMAS, "pack_rows", "pack_rows(Tensor text) -> Tensor")
        _ext.reset()
    monkeypatch.setenv("VLMO_FAST_KERNELS", "auto")

    def no_extension(*args, **kwargs):
        raise AssertionError("the extension path must not run")

    monkeypatch.setattr(pk, "_layout_from_lens", no_extension)
    b = random_batch(5, 4, torch.float32, image_len=3)
    with pytest.warns(RuntimeWarning, match="fall back to their torch references"):
        layout = pk.make_layout(b.lens, 3)
    assert not _ext.available(torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: later calls are silent
        x = pk.pack(b.text, b.image, layout)
        text, image = pk.unpack(x, layout, b.padded_len)
    assert torch.equal(x, pk.pack_ref(b.text, b.image, pk.make_layout_ref(b.lens, 3)))
    assert torch.equal(image, b.image)
    assert torch.equal(text, b.text * b.mask[..., None])
