"""The step module as a run's processes execute it: alone (one process), inside DistributedDataParallel (strategy=ddp,
replicated), or sharded in place by FSDP2 (strategy=fsdp); with the gradient synchronisation of accumulation
micro-steps and the all-ranks agreement on skipping a step."""
from __future__ import annotations

import contextlib
import logging

import torch
import torch.distributed as dist
from torch import nn

from .sharding import average_gradients, shard

log = logging.getLogger(__name__)


class ParallelStep:
    """Calls `module` (a StepModule holding `model`) as the strategy runs it over `world` processes.

    Attributes: module (the step module itself, sharded in place with FSDP), ddp (its DistributedDataParallel
    wrapper, None unless replicated over several processes), fsdp, replicated (parameters FSDP leaves whole)."""

    def __init__(self, module: nn.Module, model: nn.Module, strategy: str, world: int, device: torch.device,
                 evaluation_only: bool):
        self.module, self.world = module, world
        self.fsdp = strategy == "fsdp" and world > 1 and not evaluation_only  # evaluation runs the whole model
        if strategy == "fsdp" and world == 1:
            log.warning("strategy=fsdp with a single process: nothing to shard, training unsharded")
        self.replicated: list[nn.Parameter] = shard(module, model) if self.fsdp else []
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if world > 1 and not self.fsdp:
            self.ddp = nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)

    def __call__(self, *args, **kwargs):
        return (self.ddp or self.module)(*args, **kwargs)

    @contextlib.contextmanager
    def gradient_sync(self, on: bool):
        """Accumulation micro-steps keep their gradients local (no all-reduce / reduce-scatter until the last)."""
        if on or self.world == 1:
            yield
        elif self.fsdp:
            self.module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.module.set_requires_gradient_sync(True)
        else:
            with self.ddp.no_sync():
                yield

    def any_rank(self, flag: torch.Tensor) -> bool:
        """Whether a 0-d bool `flag` is set on any rank (a read of the device, after the step's work)."""
        hit = flag.float()
        if self.world > 1:
            dist.all_reduce(hit, op=dist.ReduceOp.MAX)
        return bool(hit.item())

    def average_replicated_gradients(self) -> None:
        """FSDP: the gradients of the parameters it leaves whole, averaged over ranks as DDP would."""
        average_gradients(self.replicated)
