"""Small image files for the data tests: every colour mode, corrupt and truncated files."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(mode: str = "RGB", size: tuple[int, int] = (40, 30), fmt: str = "JPEG", seed: int = 0) -> bytes:
    """An encoded image of the given PIL mode (RGB, L, CMYK, RGBA, P) with smooth random content."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = (np.linspace(0, 1, w)[None, :, None] * rng.uniform(50, 200, 3) + rng.uniform(0, 50, 3))
    arr = np.broadcast_to(base, (h, w, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def corrupt_bytes() -> bytes:
    return b"\x89PNG this is not an image at all" * 3


def truncated_bytes() -> bytes:
    data = image_bytes("RGB", (64, 64), "JPEG", seed=3)
    return data[: len(data) // 2]


def damaged_shards(src: Path, dst: Path, *, missing: str, truncated: str, keep_bytes: int, corrupt: str,
                   broken: int) -> Path:
    """A copy of the shard directory src at dst with shard `missing` removed, shard `truncated` cut to its first
    keep_bytes, then in each shard matching the glob `corrupt` the first PNG's body overwritten with `broken`
    zero bytes (the size stays: only decoding fails)."""
    shutil.copytree(src, dst)
    (dst / missing).unlink()
    cut = dst / truncated
    cut.write_bytes(cut.read_bytes()[:keep_bytes])
    for shard in dst.glob(corrupt):
        data = shard.read_bytes()
        at = data.index(b"\x89PNG")
        shard.write_bytes(data[:at + 8] + bytes(broken) + data[at + 8 + broken:])
    return dst
