"""The run-directory lock: a live holder refuses a second run naming it, a holder known to be gone is taken over
with a warning, a restart of the same torchrun run takes its own lock over on any host.  (The real two-process
case, `vlmo-fast train` against `vlmo-fast train`, is in tests/distributed/test_faults.py.)"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from vlmo_fast.train import run_lock
from vlmo_fast.train.run_lock import LOCK, RunDirectoryInUse, RunLock, hold_run_directory


def holder(tmp_path, **fields) -> dict:
    info = {"host": "node-7", "pid": 4242, "started": "2026-12-01T08:00:00+00:00", "run_id": None,
            "boot_id": None, "process_start": None, "token": "theirs", **fields}
    (tmp_path / LOCK).write_text(json.dumps(info))
    return info


@pytest.fixture(autouse=True)
def no_torchrun(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)


def test_live_holder_on_another_host_is_named(tmp_path):
    holder(tmp_path, run_id="job-1")
    with pytest.raises(RunDirectoryInUse, match="in use by another run .host node-7, pid 4242, started "
                                                "2026-12-01T08:00:00.00:00, torchrun run id job-1"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK).read_text())["token"] == "theirs"  # left alone


def test_same_torchrun_run_takes_its_lock_over_on_any_host(tmp_path, monkeypatch):
    holder(tmp_path, run_id="job-1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default id is shared by unrelated jobs
    with pytest.raises(RunDirectoryInUse):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    with RunLock(tmp_path) as lock:
        assert json.loads((tmp_path / LOCK).read_text()) == lock.me
    assert not (tmp_path / LOCK).exists()


def test_gone_holders_on_this_host_are_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = {"process is gone": dict(pid=int(dead.stdout)),
            "pid now belongs to another process": dict(pid=os.getpid(), process_start=1),
            "host has restarted": dict(pid=os.getpid(), boot_id="another-boot")}
    for why, fields in gone.items():
        if why == "host has restarted" and run_lock._boot_id() is None:
            continue  # no boot id outside Linux
        holder(tmp_path, host=socket.gethostname(), **fields)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=run_lock.__name__), RunLock(tmp_path) as lock:
            assert json.loads((tmp_path / LOCK).read_text())["token"] == lock.me["token"]
        assert f"stale lock of a run that is gone (host {socket.gethostname()}, pid {fields['pid']}" in caplog.text
        assert why in caplog.text


def test_unreadable_lock_is_taken_over_and_release_keeps_others_locks(tmp_path, caplog):
    (tmp_path / LOCK).write_bytes(bytes(64))  # zero-filled by a crash of the machine
    with caplog.at_level(logging.WARNING, logger=run_lock.__name__), RunLock(tmp_path):
        holder(tmp_path)  # someone replaced it meanwhile (by hand): releasing must not delete theirs
    assert "unreadable" in caplog.text and json.loads((tmp_path / LOCK).read_text())["token"] == "theirs"


def test_hold_run_directory_releases_on_failure(tmp_path):
    with pytest.raises(ZeroDivisionError), hold_run_directory(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK).is_file()
        1 / 0
    assert not (tmp_path / "run" / LOCK).exists()
    with hold_run_directory(tmp_path / "run"), pytest.raises(RunDirectoryInUse, match=f"pid {os.getpid()}"):
        with hold_run_directory(tmp_path / "run"):
            pass
