"""A torchrun elastic restart resumes: a worker killed with SIGKILL mid-run, torchrun (--max-restarts 1) restarts
the group, resume=auto continues from the last checkpoint, and every logged loss, those of the steps repeated after
the restart included, equals the uninterrupted run's.  (Before the process group's keys were put under the
torchrun attempt, about half of such restarts failed: the new gloo group read the dead workers' addresses.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distributed.common import REPO, torchrun
from tests.helpers import TINY

STEPS = 8


def command(root, log_dir: Path) -> list[str]:
    return ["-m", "vlmo_fast.cli", "train", "task_mlm_itm_itc_tiny", *TINY, f"data_root={root}", f"log_dir={log_dir}",
            "drop_path_rate=0.1", f"max_train_steps={STEPS}", "checkpoint_every=2", "resume=auto"]


def worker_of_rank(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker (a child of `parent`) with RANK=rank in its environment."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(stat.parent.name)
    return None


def log_of(log_dir: Path) -> list[dict]:
    path = log_dir / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers through /proc")
def test_killed_worker_is_restarted_and_resumes(synthetic_root, tmp_path):
    torchrun(*command(synthetic_root, tmp_path / "full"))
    expected = {r["step"]: r["loss"] for r in log_of(tmp_path / "full")}

    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "--max-restarts=1", *command(synthetic_root, cut)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, killed = time.time() + 240, False
        while time.time() < deadline and proc.poll() is None:
            if len(log_of(cut)) >= 3 and (cut / "checkpoints" / "step_00000002").is_dir():
                pid = worker_of_rank(proc.pid, 1)  # not rank 0, which writes the log
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed = True
                break
            time.sleep(0.05)
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:  # torchrun and its workers, on a failure of this test
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed and proc.returncode == 0, output[-3000:]
    log = log_of(cut)
    assert log[-1]["step"] == STEPS and len(log) > STEPS, output[-3000:]  # some steps ran twice
    for r in log:
        assert r["loss"] == expected[r["step"]], (r["step"], r["loss"], expected[r["step"]])
    assert (cut / "metrics.json").is_file()
