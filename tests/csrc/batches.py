"""Random packed batches shared by the extension tests, and the guard that needs the extension built."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from vlmo_fast.ops import _ext


def require_ext() -> None:
    """Skip unless vlmo_fast._C loaded (the parity tests compare it against the references)."""
    if not _ext.state().loaded:
        pytest.skip(f"extension not loaded: {_ext.state().reason}")


@dataclass
class Batch:
    lens: Tensor          # (P,) int64 real text lengths
    mask: Tensor          # (P, Lt) bool prefix masks of those lengths
    text: Tensor          # (P, Lt, D)
    image: Tensor         # (P, Ni, D)
    padded_len: int       # Lt
    image_len: int        # Ni


def random_batch(P: int, D: int, dtype: torch.dtype, image_len: int, *, seed: int = 0, Lt: int = 9,
                 min_len: int = 2) -> Batch:
    """P pairs with text lengths drawn from [min_len, Lt] (min_len=0 for an image-only batch)."""
    g = torch.Generator().manual_seed(seed * 1009 + P * 31 + D)
    lens = torch.randint(min_len, Lt + 1, (P,), generator=g)
    mask = torch.arange(Lt) < lens[:, None]
    if dtype.is_floating_point:
        text = torch.randn(P, Lt, D, generator=g).to(dtype)
        image = torch.randn(P, image_len, D, generator=g).to(dtype)
    else:
        text = torch.randint(0, 30000, (P, Lt, D), generator=g).to(dtype)
        image = torch.randint(0, 30000, (P, image_len, D), generator=g).to(dtype)
    return Batch(lens, mask, text, image, Lt, image_len)
