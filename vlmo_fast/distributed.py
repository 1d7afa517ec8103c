"""Joining the process group of a torchrun run, and the collective helpers the objectives need (a no-op without an
initialised process group)."""
from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
from torch import Tensor


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the run's process group when torchrun started several processes (WORLD_SIZE/RANK); NCCL on GPUs, gloo on
    the CPU.  Returns (rank, world size).

    The group's keys live under the torchrun attempt: after an elastic restart the store can still hold the
    previous attempt's keys, and a new gloo group would read the dead workers' addresses from them."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        store, rank, size = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=size,
                                store=dist.PrefixStore(f"vlmo_fast/attempt_{attempt}", store))
        if device.type == "cuda":
            torch.cuda.set_device(device)
    return world()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of its own slice: each rank computes the same global
    loss, so the summed gradient (averaged by DDP like any other) is the exact gradient of that loss."""

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, ...]:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:
        # all_reduce of the stacked gradients rather than reduce_scatter, which gloo lacks; the features are small
        stacked = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


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
        parts = list(_AllGather.apply(x))
    else:
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.detach().contiguous())
        parts[rank] = x
    return torch.cat([parts[rank]] + parts[:rank] + parts[rank + 1:])


def fetch_rows(local: Tensor, index: Tensor) -> Tensor:
    """Rows `index` of the local-first gathered batch (gather_local_first's order), fetched from the ranks that own
    them: only the requested rows travel (two all_to_all exchanges), never every rank's whole batch.  Every rank
    must hold the same number of rows."""
    idx = index.long().to(local.device)
    if world()[1] == 1:
        return local.index_select(0, idx)
    return _exchange_rows(local, idx)


@torch.compiler.disable  # host reads of the row counts: a compiled step runs the exchange eagerly, between graphs
def _exchange_rows(local: Tensor, idx: Tensor) -> Tensor:
    rank, size = world()
    B = local.shape[0]
    others = torch.tensor([r for r in range(size) if r != rank], device=idx.device)
    owner = torch.where(idx < B, torch.full_like(idx, rank), others[(idx - B).clamp(min=0) // B])
    row = torch.where(idx < B, idx, (idx - B) % B)
    order = torch.argsort(owner, stable=True)
    want = torch.bincount(owner, minlength=size)  # rows this rank asks of each rank
    give = torch.empty_like(want)
    dist.all_to_all_single(give, want)  # rows each rank asks of this one
    want_l, give_l = want.tolist(), give.tolist()
    asked = torch.empty(sum(give_l), dtype=torch.long, device=idx.device)
    dist.all_to_all_single(asked, row[order].contiguous(), give_l, want_l)
    reply = local.index_select(0, asked).contiguous()
    got = local.new_empty((idx.shape[0],) + tuple(local.shape[1:]))
    dist.all_to_all_single(got, reply, want_l, give_l)
    out = torch.empty_like(got)
    out[order] = got
    return out


def shutdown() -> None:
    """Leave the process group together: a barrier, then destroy it while the interpreter is fully alive (a gloo
    group torn down during interpreter exit can abort the process after the work is done)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # wrappers in reference cycles (DDP) release the group first
        dist.barrier()
        dist.destroy_process_group()
