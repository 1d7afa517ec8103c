"""Nothing lost: SIGTERM checkpoints and exits cleanly and the run resumes exactly; a crash during a save leaves
the previous checkpoint loadable."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_trainer import losses, run
from tests.tiny import TINY
from vlmo_fast.train import checkpointing

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_is_exact(synthetic_root, tmp_path):
    full = losses(run(synthetic_root, tmp_path / "full", "max_train_steps=20"))
    log_dir = tmp_path / "cut"
    cmd = [sys.executable, "-m", "vlmo_fast.cli", "train", "task_mlm_itm_itc_tiny", *TINY, "drop_path_rate=0.1",
           f"data_root={synthetic_root}", f"log_dir={log_dir}", "max_train_steps=20"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log = log_dir / "log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output[-2000:]
    stopped_at = len(log.read_text().splitlines())
    assert 2 <= stopped_at < 20, output[-2000:]
    assert "resume with resume=True" in output
    assert not (log_dir / "metrics.json").exists()  # no evaluation of an interrupted run
    resumed = run(synthetic_root, log_dir, "max_train_steps=20", "resume=True")
    assert losses(resumed) == full


def test_crash_during_save_keeps_previous_checkpoint(synthetic_root, tmp_path, monkeypatch):
    run(synthetic_root, tmp_path, "max_train_steps=2", "checkpoint_every=1")
    ckpts = tmp_path / "checkpoints"
    before = checkpointing.latest_checkpoint(ckpts)

    def dies(*args, **kwargs):  # a save killed half-way: the temporary directory exists, the new name does not
        raise KeyboardInterrupt("killed during save")
    monkeypatch.setattr(checkpointing, "save_model", dies)
    with pytest.raises(KeyboardInterrupt):
        run(synthetic_root, tmp_path, "max_train_steps=4", "checkpoint_every=1", "resume=True")
    monkeypatch.undo()
    (ckpts / ".step_00000009.tmp").mkdir()  # debris of a killed save is ignored
    assert checkpointing.latest_checkpoint(ckpts) == before
    resumed = run(synthetic_root, tmp_path, "max_train_steps=3", "resume=True")
    assert [r["step"] for r in resumed][-1] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())
