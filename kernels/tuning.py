"""Autotuning policy shared by every Triton kernel of the package.

On a GPU each autotuned kernel tries its list of tile configs (pruned per call by a filter that knows the
dtype and head dim) and keeps the fastest.  Under Triton's interpreter (TRITON_INTERPRET=1, CPU machines) a
kernel normally gets one small tile: timing is moot there and every extra config costs minutes.

VLMO_FAST_AUTOTUNE_CHECK=1, read at import like TRITON_INTERPRET, makes the interpreter take the GPU configs
(at least two per kernel) and a deterministic stub timer, so the autotuner's first-call path runs on the CPU:
every kept config is launched once to be "timed", then the winner is launched for the result.  That path is
where arguments named in `reset_to_zero`/`restore_value` are zeroed or restored between launches, so a test
under the switch catches an output buffer that aliases an input.
"""
from __future__ import annotations

import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
AUTOTUNE_CHECK = os.environ.get("VLMO_FAST_AUTOTUNE_CHECK", "0") == "1"


def pick_configs(gpu: list[triton.Config], interpret: list[triton.Config]) -> list[triton.Config]:
    """The configs an autotuner holds: the GPU list, except under the interpreter without the check."""
    if INTERPRET and not AUTOTUNE_CHECK:
        return interpret
    return gpu


def stub_bench(kernel_call, quantiles=None, **_):
    """A timer for the interpreter: runs the config once (so its launch and the autotuner's resets really
    happen) and reports the same time for every config, so the autotuner keeps the first kept one."""
    kernel_call()
    return [1.0, 1.0, 1.0] if quantiles else 1.0


def bench_fn():
    """The autotuners' `do_bench`: the stub under the check, Triton's own timer otherwise."""
    return stub_bench if (INTERPRET and AUTOTUNE_CHECK) else None
