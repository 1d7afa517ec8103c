"""Image pipeline throughput: PIL (transforms.py, one process) vs DALI (dali.py) at 224 and 384 px, with and
without RandomAugment; images/s recorded in extra_info by the shared `timed` helper (work = images).

Run: pytest benchmarks/bench_data.py --benchmark-only.  On the CPU DALI runs its 'cpu' decoder; on CUDA the
'mixed' (nvJPEG) decoder.  Source images: 500x375 JPEGs (COCO-like), a batch of 16.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vlmo_fast.data.images import decode_rgb
from vlmo_fast.data.transforms import SquareTransformRandAug, square_transform

BATCH = 16


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(BATCH):
        # smooth gradients plus noise: a JPEG size close to a photo's (~50-80 kB at 500x375)
        y, x = np.mgrid[0:375, 0:500]
        base = np.stack([(x * (k + 1)) % 256, (y * 2 + k * 7) % 256, (x + y) % 256], -1).astype(np.float32)
        arr = (base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("size", [224, 384])
@pytest.mark.parametrize("mode", ["val", "train", "train_randaug"])
def test_pil(timed, jpegs, size, mode):
    tf = square_transform(size) if mode == "val" else SquareTransformRandAug(size, randaug=mode == "train_randaug")
    rngs = [np.random.default_rng(i) for i in range(BATCH)]

    def run():
        return torch.stack([tf(decode_rgb(b), r) for b, r in zip(jpegs, rngs)])

    timed(run, "cpu", work=BATCH, unit="images/s", rounds=3, warmup=1)


@pytest.mark.parametrize("size", [224, 384])
@pytest.mark.parametrize("mode", ["val", "train", "train_randaug"])
def test_dali(timed, jpegs, size, mode):
    pytest.importorskip("nvidia.dali")
    from vlmo_fast.data.dali import DaliDecoder
    dec = DaliDecoder(size, train=mode != "val", randaug=mode == "train_randaug", device=_device(),
                      batch_size=BATCH, num_threads=2)
    timed(lambda: dec(jpegs), _device(), work=BATCH, unit="images/s", rounds=3, warmup=1)
