"""What one log line of a training run reports: the steps since the previous line (their samples, FLOPs, wall time,
mean loss, and the time they waited for their batches: the data stall)."""
from __future__ import annotations

import time
from typing import Iterable, Iterator

import torch


class LogWindow:
    """Counters of the optimizer steps since the last log line; `record` makes the line, `reset` starts the next."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.samples, self.flops, self.start = 0, 0.0, time.perf_counter()
        self.losses: list[torch.Tensor] = []
        self.wait, self.steps = 0.0, 0  # seconds the window's steps waited for their batches; the steps

    def add_micro_step(self, samples: int, flops: float, loss: torch.Tensor) -> None:
        self.samples += samples
        self.flops += flops
        self.losses.append(loss.detach())

    def record(self, step: int, epoch: int, lr: float, peak_flops: float | None, losses: dict, metrics: dict) -> dict:
        """The log line: the window's means and rates, and the losses and metrics of the last micro-step."""
        dt = time.perf_counter() - self.start
        return {"step": step, "epoch": epoch, "loss": torch.stack(self.losses).float().mean().item(), "lr": lr,
                "samples_per_s": self.samples / dt, "tflops_per_s": self.flops / dt / 1e12,
                **({"mfu": self.flops / dt / peak_flops} if peak_flops else {}),
                "data_wait_s": self.wait / self.steps, "stall_fraction": self.wait / dt,
                **{k: v.item() for k, v in losses.items()}, **{k: v.item() for k, v in metrics.items()}}


def timed(batches: Iterable, window: LogWindow) -> Iterator:
    """Yield the batches, adding the time spent waiting for each to window.wait (the data stall)."""
    it = None
    while True:
        start = time.perf_counter()
        it = iter(batches) if it is None else it  # starting the loader's workers is part of the first wait
        batch = next(it, None)
        window.wait += time.perf_counter() - start
        if batch is None:
            return
        yield batch
