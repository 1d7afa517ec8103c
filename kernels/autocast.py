"""Autocast for the custom ops: torch.autocast does not reach inside a custom op, so each public kernel function
asks here which dtype its matmul operands take (fp32 accumulation either way)."""
from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """The autocast dtype where autocast is enabled on x's device, else x's own dtype (fp64 is never cast, as
    autocast leaves it)."""
    device = x.device.type
    if x.dtype == torch.float64 or not torch.is_autocast_enabled(device):
        return x.dtype
    return torch.get_autocast_dtype(device)
