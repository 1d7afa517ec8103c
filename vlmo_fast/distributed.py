"""The collective helpers the objectives need (a no-op without an initialised process group)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_local_first(x: Tensor, with_grad: bool = True) -> Tensor:
    """Concatenate x of every rank along dim 0, this rank's rows first, then ranks 0..W-1 without this one (the
    official order, so row k < B is always this rank's sample k).

    with_grad=True back-propagates into every rank's copy (the exact gradient of the global loss once DDP averages
    the gradients, since each rank computes the same global loss); False is the official behaviour (other ranks'
    rows are constants).
    """
    rank, size = world()
    if size == 1:
        return x
    if with_grad:
        parts = list(torch.distributed.nn.functional.all_gather(x))
    else:
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.detach().contiguous())
        parts[rank] = x
    return torch.cat([parts[rank]] + parts[:rank] + parts[rank + 1:])
