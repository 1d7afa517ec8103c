"""FSDP2 (`fully_shard`) for models too large to replicate: each transformer block is its own shard group (gathered
just before it runs, freed after), everything else is one group at the root (the step module).

The two 0-dim contrastive temperatures (logit_scale, logit_vl_scale) cannot be sharded (fully_shard splits dim 0):
they stay replicated, and their gradients are averaged by hand before each optimizer step, as DDP would.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

try:  # public from torch 2.6; the composable API before that
    from torch.distributed.fsdp import fully_shard
except ImportError:  # pragma: no cover - torch < 2.6
    from torch.distributed._composable.fsdp import fully_shard
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

STRATEGIES = ("ddp", "fsdp")


def shard(step_module: nn.Module, model: nn.Module) -> list[nn.Parameter]:
    """Shard `step_module` (which holds `model`) in place; returns the parameters left replicated."""
    replicated = [p for p in step_module.parameters() if p.dim() == 0]
    with torch.no_grad():  # every rank starts from rank 0's weights, as DDP does (each rank drew its own init)
        for t in [*step_module.parameters(), *step_module.buffers()]:
            dist.broadcast(t, src=0)
    for blk in model.transformer.blocks:
        fully_shard(blk)
    try:
        fully_shard(step_module, ignored_params=set(replicated))
    except TypeError as e:  # torch < 2.7: no ignored_params, and the scalars cannot be sharded
        raise RuntimeError(f"strategy=fsdp needs torch >= 2.7 (fully_shard(ignored_params=...)); this is torch "
                           f"{torch.__version__}: use strategy=ddp") from e
    return replicated


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce the gradients of the replicated parameters to their mean over ranks (one flat collective)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, v in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(v.view_as(g))


def full_state_dict(model: nn.Module, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded state dict of a (partly) sharded model, under the plain model's names.  A collective: every
    rank must call it.  rank0_only: gathered to the CPU on rank 0 only (the others get {})."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=rank0_only))


def is_sharded(param: torch.Tensor) -> bool:
    """Whether a parameter is an FSDP shard (a DTensor)."""
    return isinstance(param, DTensor)
