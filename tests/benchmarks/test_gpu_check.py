"""benchmarks/gpu_check.sh --dry-run: every step of the one-call GPU script runs on this CPU at tiny sizes
(interpreted kernels, autotuners on their first-call path), writes its files for the device tool and prints one
final table, so the script is known to work before a GPU is lent."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = ["environment", "build", "kernel_parity", "fixture_parity_triton", "op_benchmarks", "train_step",
         "sync_free_step"]


@pytest.mark.slow
def test_dry_run(tmp_path, official_dir):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, VLMO_FAST_FIXTURES=str(official_dir))
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=1200)
    steps = [line.split("|") for line in (tmp_path / "steps.txt").read_text().splitlines()]
    assert [s[0] for s in steps] == STEPS, steps
    assert all(s[1] == "ok" for s in steps), (steps, result.stdout[-4000:])
    assert result.returncode == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and {"summary.md", "bench_step.jsonl", "bench_ops.json", "gpu_check.log"} <= set(files)
    summary = (tmp_path / "summary.md").read_text()
    assert "| train_step | ok |" in summary and "vlmo_fast" in summary and "official_style" in summary
    assert summary.strip() in result.stdout  # the final table is what the call prints last
