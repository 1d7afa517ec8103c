"""Every seed a run derives from its `seed`, in one place.

Each stream has its own derivation so that none repeats another (the epoch's sample order, the loader workers,
a sample's augmentation, a training step's draws).  The constants are part of a run's identity: a checkpoint
resumed by a later version sees the same order and the same draws only while they stay as they are.
"""
from __future__ import annotations

import numpy as np


def _mixed(*parts: int) -> int:
    """A 63-bit seed hashed from integers (independent streams for any combination)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def epoch_order_seed(seed: int, epoch: int) -> int:
    """The permutation of an epoch's samples (arrow) or shards (tar shards), the same on every rank."""
    return seed * 100003 + epoch


def loader_seed(seed: int, epoch: int) -> int:
    """The DataLoader's own generator for an epoch (worker seeds), never the global one."""
    return seed * 7919 + epoch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """One sample's augmentation in one epoch."""
    return _mixed(seed, epoch, index)


def batch_seed(sample_seeds: list[int]) -> int:
    """A batch's draws (MLM masking) from the seeds of its samples."""
    return _mixed(*sample_seeds)


def step_seed(seed: int, micro_step: int, rank: int, world: int) -> int:
    """A training micro-step's draws on one rank (hard negatives, stochastic depth); micro_step counts every
    micro-step of the run (optimizer step x accumulation + micro)."""
    return seed * 1_000_003 + micro_step * world + rank
