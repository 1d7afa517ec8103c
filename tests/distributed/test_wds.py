"""A 2-process gloo run of the trainer over tar shards: every sample of the epoch but the dropped tail is trained on
exactly once across the ranks, also when rank 0 is killed mid-epoch and the run resumes from its checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY
from vlmo_fast.data.convert.to_shards import convert_as_shards
from vlmo_fast.data.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[2]


def torchrun_trainer(record: Path, kill_at: int, overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "distributed" / "wds_worker.py"), str(record), str(kill_at), *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def records(record: Path) -> list[dict]:
    return [json.loads(line) for r in (0, 1) if Path(f"{record}.rank{r}").is_file()
            for line in Path(f"{record}.rank{r}").read_text().splitlines()]


@pytest.mark.slow
def test_two_ranks_see_each_sample_once_also_after_a_kill_and_resume(tmp_path):
    data = tmp_path / "shards"
    convert_as_shards(lambda out: write_synthetic(out, n_train=30, n_val=8, n_test=8, n_pairs_train=2, n_pairs_dev=2,
                                                  n_text_train=2, n_text_val=2, progress_bar=False),
                      data, max_samples=7, progress_bar=False)
    # 60 captions, 2 ranks x batch 4: 7 steps per epoch, the last 4 samples dropped
    overrides = [*TINY, "data_format=wds", f"data_root={data}", f"log_dir={tmp_path / 'run'}", "max_train_steps=7",
                 "checkpoint_every=3", "wds_shuffle_buffer=10", "eval_limit=4", "get_recall_metric=False"]
    killed = torchrun_trainer(tmp_path / "first", 3, overrides)
    assert killed.returncode != 0  # rank 0 died after the checkpoint of step 3
    first = [r for r in records(tmp_path / "first") if r["micro"] < 3]  # what the checkpoint holds
    resumed = torchrun_trainer(tmp_path / "second", 0, overrides + ["resume=True"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    second = records(tmp_path / "second")
    assert {r["epoch"] for r in first + second} == {0} and sorted({r["micro"] for r in second}) == [3, 4, 5, 6]
    keys = [k for r in first + second for k in r["keys"]]
    assert len(first) == 6 and len(keys) == 56 and len(set(keys)) == 56 and set(keys) <= set(range(60))
