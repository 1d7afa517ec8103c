"""DALI pipeline (CPU here) against the PIL path on the same images; decoder choice."""
import pytest
import torch

from tests.data.helpers import image_bytes
from vlmo_fast.data.dali import dali_available, pick_decoder
from vlmo_fast.data.images import decode_rgb
from vlmo_fast.data.transforms import square_transform


def test_pick_decoder():
    assert pick_decoder("cpu", "auto") == "pil"
    assert pick_decoder("cuda", "pil") == "pil"
    assert pick_decoder("cuda", "auto") == ("dali" if dali_available() else "pil")
    with pytest.raises(ValueError, match="auto, dali or pil"):
        pick_decoder("cpu", "nvjpeg")
    if not dali_available():
        with pytest.raises(ImportError, match="pip install nvidia-dali-cuda120"):
            pick_decoder("cpu", "dali")


@pytest.fixture(scope="module")
def images():
    pytest.importorskip("nvidia.dali")
    return [image_bytes(mode, (70 + 9 * k, 50 + 5 * k), fmt, seed=k)
            for k, (mode, fmt) in enumerate([("RGB", "JPEG"), ("RGB", "PNG"), ("L", "PNG"), ("RGB", "JPEG")])]


def test_dali_val_matches_pil(images):
    """Contract: same shapes, range [-1, 1]; mean abs error below 0.01 and max below 0.15 (of a range of 2)
    (both bicubic with antialias; JPEG decoders and resampling kernels differ in rounding)."""
    from vlmo_fast.data.dali import DaliDecoder
    out = DaliDecoder(32, train=False, device="cpu", batch_size=8)(images)
    ref = torch.stack([square_transform(32)(decode_rgb(b)) for b in images])
    assert out.shape == ref.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    err = (out - ref).abs()
    assert err.mean() < 0.01 and err.max() < 0.15


def test_dali_train_pipeline(images):
    from vlmo_fast.data.dali import DaliDecoder
    dec = DaliDecoder(24, train=True, device="cpu", batch_size=8, seed=1)
    a = dec(images)
    b = dec(images)
    assert a.shape == (4, 3, 24, 24) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, b)  # fresh augmentation per call
    batch = dec.apply({"image_bytes": images, "text": ["x"] * 4})
    assert "image_bytes" not in batch and batch["image"][0].shape == (4, 3, 24, 24)


def test_decode_ahead_keeps_order_and_equals_one_at_a_time(images):
    """decode_ahead decodes `prefetch` batches ahead in a thread (pairs of NLVR2 images too); results and order
    equal decoding each batch when it is needed."""
    from vlmo_fast.data.dali import DaliDecoder
    batches = [{"image_bytes": images[k:] + images[:k], "raw_index": k} for k in range(4)]
    batches.append({"image_0_bytes": images, "image_1_bytes": images[::-1], "raw_index": 4})
    ahead = list(DaliDecoder(32, train=False, device="cpu", batch_size=8, prefetch=2).decode_ahead(
        [dict(b) for b in batches]))
    single = DaliDecoder(32, train=False, device="cpu", batch_size=8, prefetch=1)
    assert [b["raw_index"] for b in ahead] == list(range(5))
    for got, want in zip(ahead, batches):
        for key in [k for k in want if k.endswith("_bytes")]:
            assert key not in got and torch.equal(got[key[:-6]][0], single(want[key]))
