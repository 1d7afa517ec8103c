"""Nothing lost: SIGTERM checkpoints and exits cleanly and the run resumes exactly; a crash during a save leaves
the previous checkpoint loadable; a checkpoint damaged by a crash of the machine is skipped on resume; a full disk
stops the run (or is retried) with the previous checkpoint intact; every checkpoint file and directory is fsynced;
one run per log_dir."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import TINY, losses, run
from vlmo_fast.checkpoint import durable
from vlmo_fast.checkpoint.manifest import verify
from vlmo_fast.cli import main
from vlmo_fast.train import checkpointing, intact

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
    before = intact.latest_checkpoint(ckpts)

    def dies(*args, **kwargs):  # a save killed half-way: the temporary directory exists, the new name does not
        raise KeyboardInterrupt("killed during save")
    monkeypatch.setattr(checkpointing, "save_model", dies)
    with pytest.raises(KeyboardInterrupt):
        run(synthetic_root, tmp_path, "max_train_steps=4", "checkpoint_every=1", "resume=True")
    monkeypatch.undo()
    (ckpts / ".step_00000009.tmp").mkdir()  # debris of a killed save is ignored
    assert intact.latest_checkpoint(ckpts) == before
    resumed = run(synthetic_root, tmp_path, "max_train_steps=3", "resume=True")
    assert [r["step"] for r in resumed][-1] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())


@pytest.fixture(scope="module")
def power_lost_run(synthetic_root, tmp_path_factory) -> Path:
    """A run whose machine died after its step-4 checkpoint, before it wrote "last" (checkpoints every 2 steps)."""
    log_dir = tmp_path_factory.mktemp("power_lost")
    save = checkpointing.save_training_state

    def dies_at_last(directory, model, optimizer, scheduler, scaler, position, config, tag=None, rng=None):
        if tag == "last":
            raise KeyboardInterrupt("power loss")
        return save(directory, model, optimizer, scheduler, scaler, position, config, tag, rng)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(checkpointing, "save_training_state", dies_at_last)
        run(synthetic_root, log_dir, "max_train_steps=4", "checkpoint_every=2")
    return log_dir


@pytest.mark.parametrize("damage", ["truncated weights", "zero-filled trainer state"])
def test_resume_skips_a_damaged_checkpoint_and_repeats_the_curve(synthetic_root, power_lost_run, tmp_path, caplog,
                                                                 damage):
    """After a power loss the newest checkpoint is renamed into place with a damaged file: resume names it, falls
    back to the previous one, and the steps from there give the uninterrupted losses bit for bit."""
    log_dir = tmp_path / "run"
    shutil.copytree(power_lost_run, log_dir)
    first = {r["step"]: r["loss"] for r in map(json.loads, (log_dir / "log.jsonl").read_text().splitlines())}
    newest = log_dir / "checkpoints" / "step_00000004"
    if damage == "truncated weights":
        os.truncate(newest / "model.safetensors", (newest / "model.safetensors").stat().st_size // 2)
        what = "model.safetensors is truncated"
    else:
        (newest / "trainer.pt").write_bytes(bytes((newest / "trainer.pt").stat().st_size))
        what = "trainer.pt is zero-filled"
    with caplog.at_level(logging.WARNING):
        resumed = run(synthetic_root, log_dir, "max_train_steps=4", "checkpoint_every=2", "resume=True")
    warnings = [r.getMessage() for r in caplog.records if "newest intact" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"checkpoints/step_00000004: {what}"), warnings
    assert warnings[0].endswith("resuming from the newest intact checkpoint, step_00000002")
    assert [(r["step"], r["loss"]) for r in resumed[4:]] == [(3, first[3]), (4, first[4])]
    assert verify(newest) == [] and verify(log_dir / "checkpoints" / "last") == []  # rewritten whole


class FullDisk:
    """Checkpoint writes fail with ENOSPC once `budget` bytes have been written (a size-limited directory); after
    `times` failures the space is freed."""

    def __init__(self, monkeypatch, budget: int, times: int = 1):
        self.budget, self.times, self.real = budget, times, durable.HashingWriter.write
        monkeypatch.setattr(durable.HashingWriter, "write", lambda writer, data: self.write(writer, data))

    def write(self, writer, data) -> int:
        self.budget -= memoryview(data).nbytes
        if self.budget < 0 and self.times > 0:
            self.times -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(writer, data)


def test_full_disk_during_a_save_stops_or_retries(synthetic_root, tmp_path, monkeypatch, capsys, caplog):
    train = ["train", "task_mlm_itm_itc_tiny", *TINY, f"data_root={synthetic_root}", f"log_dir={tmp_path}",
             "checkpoint_every=1"]
    assert main([*train, "max_train_steps=1"]) == 0
    ckpts = tmp_path / "checkpoints"
    before = sorted(p.name for p in ckpts.iterdir())
    weights = (ckpts / "step_00000001" / "model.safetensors").stat().st_size
    FullDisk(monkeypatch, budget=weights + 10_000)  # the step-2 save fails in its trainer state
    assert main([*train, "max_train_steps=3", "resume=True"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint step_00000002 could not be written in {ckpts}: [Errno 28] No space left on device" in err
    assert "The run stops" in err and "resume=True" in err
    assert sorted(p.name for p in ckpts.iterdir()) == before  # no temporary directory left, nothing replaced
    assert intact.latest_checkpoint(ckpts).name == "last" and verify(ckpts / "step_00000001") == []

    FullDisk(monkeypatch, budget=weights + 10_000)
    with caplog.at_level(logging.WARNING):
        log = run(synthetic_root, tmp_path, "checkpoint_every=1", "max_train_steps=3", "resume=True",
                  "checkpoint_on_error=retry")
    assert "No space left on device" in caplog.text and "checkpoint_on_error=retry" in caplog.text
    assert [r["step"] for r in log][-2:] == [2, 3]
    assert sorted(p.name for p in ckpts.iterdir()) == ["last", "step_00000001", "step_00000003"]
    assert verify(ckpts / "step_00000003") == [] and (tmp_path / "metrics.json").is_file()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fsynced paths from /proc")
def test_checkpoint_files_and_directories_are_fsynced(synthetic_root, tmp_path, monkeypatch):
    """Every file of a checkpoint is fsynced under its temporary name, its directory before the rename, and the
    checkpoints directory after it; so are log.jsonl (before the save), metrics.json and their directory."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recorded_replace(src, dst):
        events.append(("replace", f"{src} -> {dst}"))
        replace(src, dst)
    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    run(synthetic_root, tmp_path, "max_train_steps=1")
    monkeypatch.undo()
    ckpts, last = tmp_path / "checkpoints", tmp_path / "checkpoints" / "last"
    rename = events.index(("replace", f"{ckpts / '.last.tmp'} -> {last}"))
    synced = [path for op, path in events[:rename] if op == "fsync"]
    for name in ["model.safetensors", "config.json", "trainer.pt", "manifest.json"]:
        assert str(ckpts / ".last.tmp" / f"{name}.tmp") in synced, name
    assert str(ckpts / ".last.tmp") == synced[-1] and str(tmp_path / "log.jsonl") in synced
    assert ("fsync", str(ckpts)) == events[rename + 1]
    after = [path for op, path in events[rename:] if op == "fsync"]
    assert after.index(str(tmp_path / "metrics.json.tmp")) + 1 == after.index(str(tmp_path))
    assert all(str(tmp_path / "model" / f"{n}.tmp") in after for n in ["model.safetensors", "manifest.json"])


def test_a_second_run_on_a_live_log_dir_is_refused_then_takes_a_stale_lock_over(synthetic_root, tmp_path, capsys,
                                                                                 caplog):
    train = ["train", "task_mlm_itm_itc_tiny", *TINY, f"data_root={synthetic_root}", f"log_dir={tmp_path / 'run'}"]
    output = tmp_path / "first.out"
    with open(output, "w") as out:  # the first run: a real process, killed below
        first = subprocess.Popen([sys.executable, "-m", "vlmo_fast.cli", *train, "max_train_steps=100000"], cwd=REPO,
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        lock, deadline = tmp_path / "run" / "run.lock", time.time() + 120
        while not lock.is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert lock.is_file(), output.read_text()[-3000:]
        assert main([*train, "max_train_steps=1"]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'run'} is in use by another run (host {socket.gethostname()}, pid {first.pid}, started" \
            in err
        assert first.poll() is None  # the first run goes on untouched
    finally:
        first.kill()  # SIGKILL: no chance to remove its lock
        first.wait()
    with caplog.at_level(logging.WARNING):
        assert main([*train, "max_train_steps=1"]) == 0
    assert f"taking over the stale lock of a run that is gone (host {socket.gethostname()}, pid {first.pid}" \
        in caplog.text and "its process is gone" in caplog.text
    assert not lock.exists() and (tmp_path / "run" / "metrics.json").is_file()
