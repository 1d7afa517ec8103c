"""Shared benchmark helpers: one timing routine (CUDA-synchronised on GPU) and the environment of a result."""
from __future__ import annotations

import os
import platform

import pytest
import torch


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def environment(device: torch.device | str) -> dict:
    """Device, torch and triton versions, stored with every result."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": device_name(device), "torch": torch.__version__, "triton": triton_version}


@pytest.fixture
def timed(benchmark):
    """timed(fn, device, work=None, unit="TFLOP/s") runs fn under pytest-benchmark, synchronising CUDA, and
    records `work / median time` (work in FLOPs or bytes; unit names it) with the environment."""

    def run(fn, device, work: float | None = None, unit: str = "TFLOP/s", rounds: int = 5, warmup: int = 2):
        device = torch.device(device)

        def call():
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out

        if benchmark.disabled:  # --benchmark-disable: one plain call, as a smoke test of the case
            return call()
        if os.environ.get("VLMO_FAST_BENCH_QUICK") == "1":  # gpu_check.sh --dry-run: one timed call, no warmup
            rounds, warmup = 1, 0
        for _ in range(warmup):
            call()
        result = benchmark.pedantic(call, rounds=rounds, iterations=1)
        benchmark.extra_info.update(environment(device))
        if work is not None:
            scale = {"T": 1e12, "G": 1e9, "M": 1e6}.get(unit[0], 1.0)  # TFLOP/s, GB/s, ...; samples/s as is
            benchmark.extra_info[unit] = work / benchmark.stats.stats.median / scale
        return result

    return run
