"""Image transforms (spec 6.2): shapes, ranges, determinism, and the RandomAugment ops' defining properties."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.helpers import image_bytes
from vlmo_fast.data import randaugment as ra
from vlmo_fast.data.images import BadImage, decode_rgb
from vlmo_fast.data.transforms import get_transform, random_resized_crop_box, square_transform, \
    square_transform_randaug


def _img(w=50, h=37, seed=0) -> Image.Image:
    return Image.open(io.BytesIO(image_bytes("RGB", (w, h), "PNG", seed))).convert("RGB")


def test_square_transform_shape_range_and_values():
    img = _img()
    t = square_transform(32)(img)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    ref = np.asarray(img.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1
    assert torch.allclose(t, torch.from_numpy(ref).permute(2, 0, 1), atol=1e-6)


@pytest.mark.parametrize("size", [16, 33, 64])
def test_randaug_transform_shape_range_determinism(size):
    tf = square_transform_randaug(size)
    img = _img()
    outs = [tf(img, np.random.default_rng(s)) for s in range(12)]
    assert all(o.shape == (3, size, size) and o.min() >= -1 and o.max() <= 1 for o in outs)
    assert torch.equal(outs[3], tf(img, np.random.default_rng(3)))
    assert len({o.sum().item() for o in outs}) > 6  # different seeds, different augmentations


def test_random_resized_crop_box_bounds():
    rng = np.random.default_rng(0)
    for _ in range(500):
        left, top, w, h = random_resized_crop_box(50, 37, rng)
        assert 0 <= left and left + w <= 50 and 0 <= top and top + h <= 37
        assert 0.5 * 50 * 37 * 0.9 <= w * h <= 50 * 37
    assert random_resized_crop_box(1000, 10, rng)[2:] == (13, 10)  # impossible ratio -> clamped centre crop


def test_randaugment_ops():
    arr = np.asarray(_img(40, 40))
    assert ra.autocontrast(arr).min() == 0 and ra.autocontrast(arr).max() == 255
    eq = ra.equalize(arr)
    assert eq.shape == arr.shape and eq.max() == 255
    assert (ra.brightness(arr, 1.36).astype(int) >= arr).all()
    assert ra.sharpness(arr, 1.36).shape == arr.shape
    # cv2's matrix [[1, 0, -offset], [0, 1, 0]] maps a source x to x - offset: content moves left by offset
    shifted = ra.translate_x(arr, 7)
    assert np.array_equal(shifted[:, :-7], arr[:, 7:]) and (shifted[:, -7:] == 128).all()
    down = ra.translate_y(arr, -3)  # a negative offset moves content down, fill at the top
    assert np.array_equal(down[3:], arr[:-3]) and (down[:3] == 128).all()
    sheared = ra.shear_x(arr, 0.21)
    assert np.array_equal(sheared[0], arr[0])  # row 0 is fixed by a shear about the top-left corner
    rot = ra.rotate(arr, 21)
    assert rot.shape == arr.shape and (rot[0, 0] == 128).all()  # corners rotate out and get the fill
    assert np.array_equal(ra.rotate(arr, 0), arr)
    with pytest.raises(ValueError, match="unknown RandomAugment op"):
        ra.RandomAugment(ops=("Blur",))


def test_get_transform_names():
    assert get_transform("square_transform", 8)(_img()).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="pixelbert"):
        get_transform("pixelbert", 8)


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"),
                                       ("L", "JPEG")])
def test_decode_converts_modes_to_rgb(mode, fmt):
    img = decode_rgb(image_bytes(mode, (20, 10), fmt), "k")
    assert img.mode == "RGB" and img.size == (20, 10)
    assert square_transform(8)(img).shape == (3, 8, 8)


def test_decode_rejects_bad_bytes():
    with pytest.raises(BadImage, match="key-7"):
        decode_rgb(b"garbage", "key-7")
    data = image_bytes("RGB", (64, 64), "JPEG")
    with pytest.raises(BadImage, match="truncated-key"):
        decode_rgb(data[: len(data) // 2], "truncated-key")
