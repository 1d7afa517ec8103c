"""RandomAugment(N=2, M=7) of the official training transform (ALBEF's randaugment.py), with PIL and numpy.

The official ops are written with cv2 on uint8 HWC arrays.  Here:
- AutoContrast, Equalize, Brightness: per-channel lookup tables, the same tables as the cv2 code.
- Sharpness: the 3x3 smoothing kernel [[1,1,1],[1,5,1],[1,1,1]]/13 on the interior, blended with factor 1.36.
  The official casts the blend to uint8 without clipping (wrap-around on overflow); we clip to [0, 255].
- ShearX/Y, TranslateX/Y, Rotate: affine warps with bilinear sampling and fill (128,128,128), the same matrices
  as cv2.warpAffine (integer pixel coordinates, shear about the top-left corner, rotation about (W/2, H/2),
  counter-clockwise for positive angles); done with PIL's affine transform, so border pixels are not blended
  with the fill colour as cv2 does (a difference of at most one pixel row at the edges).
Magnitude 7 of 10: brightness/sharpness factor 1.36, shear +-0.21, translate +-7 pixels, rotate +-21 degrees
(each sign drawn with probability 0.5).  Two ops are drawn with replacement and each is applied with
probability 0.5.  All randomness comes from the numpy Generator passed in.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image

FILL = (128, 128, 128)
MAX_LEVEL = 10.0
OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
       "TranslateY", "Rotate")


def _lut(img: np.ndarray, tables: list[np.ndarray]) -> np.ndarray:
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        out[..., c] = tables[c][img[..., c]]
    return out


def autocontrast(img: np.ndarray) -> np.ndarray:
    """Stretch each channel's [min, max] to [0, 255] (cutoff 0)."""
    tables = []
    for c in range(img.shape[2]):
        lo, hi = int(img[..., c].min()), int(img[..., c].max())
        if hi <= lo:
            tables.append(np.arange(256, dtype=np.uint8))
            continue
        scale = 255.0 / (hi - lo)
        table = np.arange(256) * scale - lo * scale
        tables.append(table.clip(0, 255).astype(np.uint8))
    return _lut(img, tables)


def equalize(img: np.ndarray) -> np.ndarray:
    """Per-channel histogram equalisation with cv2.equalizeHist's table (first used level -> 0, rounded)."""
    tables = []
    for c in range(img.shape[2]):
        hist = np.bincount(img[..., c].ravel(), minlength=256)
        first = int(np.flatnonzero(hist)[0])
        total = int(hist.sum())
        if hist[first] == total:  # a constant channel stays at its value
            tables.append(np.full(256, first, dtype=np.uint8))
            continue
        scale = 255.0 / (total - hist[first])
        cum = np.cumsum(hist)
        table = np.zeros(256)
        table[first + 1:] = (cum[first + 1:] - hist[first]) * scale
        tables.append(np.clip(np.floor(table + 0.5), 0, 255).astype(np.uint8))
    return _lut(img, tables)


def brightness(img: np.ndarray, factor: float) -> np.ndarray:
    table = (np.arange(256, dtype=np.float32) * factor).clip(0, 255).astype(np.uint8)
    return table[img]


def sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    h, w = img.shape[:2]
    if h < 3 or w < 3:
        return img
    f = img.astype(np.float32)
    # Smoothed interior: sum of the 3x3 neighbourhood with the centre weighted 5, over 13, rounded like cv2.
    acc = sum(f[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    degenerate = np.floor((acc + 4.0 * f[1:-1, 1:-1]) / 13.0 + 0.5)
    out = f.copy()
    out[1:-1, 1:-1] = degenerate + factor * (f[1:-1, 1:-1] - degenerate)
    return out.clip(0, 255).astype(np.uint8)


def _affine(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """cv2.warpAffine(img, m) (m: 2x3 forward map in integer pixel coordinates) with bilinear and FILL."""
    a = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(a)[:2]  # output -> input, integer coordinates
    # PIL samples at pixel centres (x + 0.5): convert the inverse map between the two conventions.
    (p, q, r), (s, t, u) = inv
    coeffs = (p, q, r + 0.5 - 0.5 * (p + q), s, t, u + 0.5 - 0.5 * (s + t))
    pil = Image.fromarray(img)
    out = pil.transform(pil.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR,
                        fillcolor=FILL)
    return np.asarray(out)


def shear_x(img: np.ndarray, factor: float) -> np.ndarray:
    return _affine(img, np.array([[1.0, factor, 0.0], [0.0, 1.0, 0.0]]))


def shear_y(img: np.ndarray, factor: float) -> np.ndarray:
    return _affine(img, np.array([[1.0, 0.0, 0.0], [factor, 1.0, 0.0]]))


def translate_x(img: np.ndarray, offset: float) -> np.ndarray:
    return _affine(img, np.array([[1.0, 0.0, -offset], [0.0, 1.0, 0.0]]))


def translate_y(img: np.ndarray, offset: float) -> np.ndarray:
    return _affine(img, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -offset]]))


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    h, w = img.shape[:2]
    cx, cy = w / 2, h / 2
    a, b = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return _affine(img, np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy]]))


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() > 0.5 else value


def _op(name: str, level: float, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """The op `name` at `level` (0..10) with its random sign drawn now."""
    enhance = level / MAX_LEVEL * 1.8 + 0.1
    if name == "Identity":
        return lambda x: x
    if name == "AutoContrast":
        return autocontrast
    if name == "Equalize":
        return equalize
    if name == "Brightness":
        return lambda x: brightness(x, enhance)
    if name == "Sharpness":
        return lambda x: sharpness(x, enhance)
    if name in ("ShearX", "ShearY"):
        v = _signed(level / MAX_LEVEL * 0.3, rng)
        return (lambda x: shear_x(x, v)) if name == "ShearX" else (lambda x: shear_y(x, v))
    if name in ("TranslateX", "TranslateY"):
        v = _signed(level / MAX_LEVEL * 10.0, rng)
        return (lambda x: translate_x(x, v)) if name == "TranslateX" else (lambda x: translate_y(x, v))
    if name == "Rotate":
        v = _signed(level / MAX_LEVEL * 30.0, rng)
        return lambda x: rotate(x, v)
    raise ValueError(f"unknown RandomAugment op {name!r}; known: {', '.join(OPS)}")


class RandomAugment:
    """Draw `n` ops with replacement from `ops`, apply each with probability `prob` at magnitude `m`.

    Example: RandomAugment()(np.asarray(img), np.random.default_rng(0)) -> uint8 (H, W, 3)
    """

    def __init__(self, n: int = 2, m: float = 7, ops: tuple[str, ...] = OPS, prob: float = 0.5):
        for name in ops:
            _op(name, m, np.random.default_rng(0))  # validates the names up front
        self.n, self.m, self.ops, self.prob = n, m, ops, prob

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        chosen = rng.choice(len(self.ops), self.n)
        for k in chosen:
            if rng.random() > self.prob:
                continue
            img = _op(self.ops[k], self.m, rng)(img)
        return img
