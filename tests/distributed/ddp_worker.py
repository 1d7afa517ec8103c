"""Run under torchrun (2 processes, gloo): one data-parallel step (strategy ddp or fsdp) of the fused objectives with
the exact global ITC gradient, given hard negatives and drop path off; rank 0 saves the losses and the whole
parameters for tests/distributed/test_ddp.py.  Also checks that fetch_rows returns the requested rows of the global
batch."""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from tests.distributed.common import GLOBAL_BATCH, build_model, global_batch, global_negatives, shard, to_local_first
from vlmo_fast.distributed import fetch_rows, shutdown
from vlmo_fast.train import sharding
from vlmo_fast.train.step import StepDraws
from vlmo_fast.train.trainer import StepModule


def main(strategy: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    model = build_model()
    full = global_batch(model.cfg)
    local = shard(full, rank, world)
    neg_image, neg_text = (to_local_first(n, rank, world, GLOBAL_BATCH // world) for n in global_negatives())
    B = GLOBAL_BATCH // world
    mine = slice(rank * B, (rank + 1) * B)
    fetched = fetch_rows(local["image"][0], neg_image[mine])
    assert torch.equal(fetched, full["image"][0][global_negatives()[0][mine]]), "fetch_rows returned other rows"

    step = StepModule(model, {"itc", "itm", "mlm"}, gather_grad=True)
    if strategy == "fsdp":
        replicated = sharding.shard(step, model)
        assert all(sharding.is_sharded(p) for p in model.transformer.blocks.parameters()), "blocks not sharded"
        module = step
    else:
        replicated = []
        module = torch.nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
    losses, _ = module(local, StepDraws(negatives=(neg_image[mine], neg_text[mine])))
    loss = sum(losses.values())
    loss.backward()
    sharding.average_gradients(replicated)
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    gathered = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(gathered, loss.detach())
    params = sharding.full_state_dict(model) if strategy == "fsdp" else model.state_dict()
    if rank == 0:
        torch.save({"losses": {k: v.detach() for k, v in losses.items()}, "rank_losses": gathered,
                    "params": {k: v.detach().clone() for k, v in params.items()}}, out)
    del module, step  # the DDP reducer and the FSDP state hold the process group
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
