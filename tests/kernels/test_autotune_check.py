"""The autotuners' first-call path on the CPU: tests/kernels/autotune_cases.py in a process of its own with
VLMO_FAST_AUTOTUNE_CHECK=1 (every autotuner takes its GPU configs and a stub timer; the switch is read when the
kernels are imported), the kernels forced and interpreted."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_under_check(*targets: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, VLMO_FAST_AUTOTUNE_CHECK="1", TRITON_INTERPRET="1", VLMO_FAST_KERNELS="triton")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_autotune_cases_pass_under_the_check():
    result = run_under_check("tests/kernels/autotune_cases.py")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]


@pytest.mark.slow
def test_fixture_parity_with_kernels_under_the_check(official_dir):
    """The official fixtures' outputs and gradients with the Triton kernels, autotuners on their first-call path."""
    result = run_under_check("tests/compat/test_kernels_forced.py")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout, result.stdout[-2000:]
