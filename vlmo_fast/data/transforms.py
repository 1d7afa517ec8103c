"""Image transforms of spec 6.2 with PIL and numpy (no torchvision): RGB PIL image -> float tensor (3, S, S).

- `square_transform(S)` (val/test): bicubic resize to S x S (aspect ratio not kept), then [0,255] -> [-1, 1].
- `square_transform_randaug(S)` (train): RandomResizedCrop(S, scale (0.5, 1), ratio (3/4, 4/3), bicubic),
  horizontal flip with probability 0.5, RandomAugment(N=2, M=7), then [-1, 1].
Random transforms take a numpy Generator per call; the datasets derive it from (seed, epoch, sample index), so a
CPU run is deterministic whatever the number of DataLoader workers (the official np.random stream is not).
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from vlmo_fast.data.randaugment import RandomAugment


class ImageTransform(Protocol):
    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor: ...


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    t = torch.tensor(arr, dtype=torch.float32).permute(2, 0, 1)  # copies: PIL arrays are read-only
    return t.div_(127.5).sub_(1.0)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale=(0.5, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (left, top, w, h) of the crop; 10 tries, then a centre crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class SquareTransform:
    """Validation transform: bicubic resize to (size, size), to [-1, 1].  Example: square_transform(224)(img)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        img = img.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return to_tensor(np.asarray(img))


class SquareTransformRandAug:
    """Training transform (module docstring).  Example: square_transform_randaug(224)(img, np.random.default_rng(0))."""

    def __init__(self, size: int, randaug: bool = True):
        self.size = size
        self.randaug = RandomAugment(2, 7) if randaug else None

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        rng = np.random.default_rng() if rng is None else rng
        left, top, w, h = random_resized_crop_box(img.width, img.height, rng)
        img = img.resize((self.size, self.size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(img)
        if self.randaug is not None:
            arr = self.randaug(arr, rng)
        return to_tensor(arr)


def square_transform(size: int) -> SquareTransform:
    return SquareTransform(size)


def square_transform_randaug(size: int) -> SquareTransformRandAug:
    return SquareTransformRandAug(size)


def get_transform(name: str, size: int) -> ImageTransform:
    """Transform by its official config name ("square_transform" or "square_transform_randaug")."""
    if name == "square_transform":
        return square_transform(size)
    if name == "square_transform_randaug":
        return square_transform_randaug(size)
    raise ValueError(f"unknown image transform {name!r}: expected square_transform or square_transform_randaug")
