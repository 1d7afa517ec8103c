"""The official `num_gpus` / `num_nodes` keys, mapped onto torchrun (the launcher; vlmo-fast has none of its own).

Outside torchrun, `num_gpus=G` (G > 1) on one node re-runs the same command under
`torchrun --standalone --nproc_per_node G`; several nodes need torchrun started on every node, so that case stops
with the command to run.  Under torchrun the world size is torchrun's, and differing keys only earn a warning.
"""
from __future__ import annotations

import logging
import os
import sys

import torch

from vlmo_fast.run_config import RunConfig

log = logging.getLogger(__name__)


def torchrun_command(task: str, overrides: list[str], gpus: int, nodes: int = 1) -> list[str]:
    """The torchrun command line for a train run on `nodes` nodes of `gpus` processes each."""
    if nodes == 1:
        launch = ["--standalone", f"--nproc_per_node={gpus}"]
    else:
        launch = [f"--nnodes={nodes}", "--node_rank=$NODE_RANK", f"--nproc_per_node={gpus}", "--rdzv_backend=c10d",
                  "--rdzv_endpoint=$HOST:29500"]
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "vlmo_fast.cli", "train", task, *overrides]


def launch_if_needed(task: str, overrides: list[str], config: RunConfig) -> None:
    """Re-run under torchrun when the config asks for more processes than this one (does not return then)."""
    gpus, nodes = config.runtime.num_gpus, config.runtime.num_nodes  # each >= 1 (checked by the config)
    if "WORLD_SIZE" in os.environ:  # already under torchrun
        world = int(os.environ["WORLD_SIZE"])
        if gpus * nodes not in (1, world):
            log.warning("num_gpus * num_nodes = %d, but torchrun started %d processes: using %d", gpus * nodes,
                        world, world)
        return
    if gpus * nodes == 1:
        return
    if nodes > 1:
        raise ValueError(f"num_nodes={nodes}: start the run on every node with torchrun (NODE_RANK 0..{nodes - 1}, "
                         "HOST the first node):\n  " + " ".join(torchrun_command(task, overrides, gpus, nodes)))
    on_gpu = config.runtime.device != "cpu" and torch.cuda.is_available()
    if on_gpu and gpus > torch.cuda.device_count():
        raise ValueError(f"num_gpus={gpus}, but this machine has {torch.cuda.device_count()} GPU(s)")
    cmd = torchrun_command(task, overrides, gpus)
    log.info("num_gpus=%d: running under torchrun: %s", gpus, " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)
