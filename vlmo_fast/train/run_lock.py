"""One writer per run directory: `log_dir/run.lock`, taken by rank 0 when a run starts and removed when it ends.

Two runs on one log_dir (a job submitted again while the first is alive, a typo) would interleave their checkpoints,
logs and metrics.  The lock names its holder (host, pid, start time, torchrun's TORCHELASTIC_RUN_ID); a second run
on a live lock stops naming it.  A lock whose holder is gone (on this host: its pid is dead or now another process,
or the host has rebooted) is taken over with a warning, and a restart of the same torchrun run takes its own lock
over on any host.  Holders on other hosts cannot be checked and count as alive: delete the file by hand if that run
is known to be gone."""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import uuid
from pathlib import Path

import torch.distributed as dist

from vlmo_fast.checkpoint.durable import fsync_dir, write_text_durably
from vlmo_fast.errors import RunError

log = logging.getLogger(__name__)

LOCK = "run.lock"


class RunDirectoryInUse(RunError):
    """Another live run holds the run directory."""


def _read_proc(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _boot_id() -> str | None:
    text = _read_proc("/proc/sys/kernel/random/boot_id")
    return text.strip() if text else None


def _process_start(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot (Linux), so a pid reused by another process is told
    apart from the holder."""
    stat = _read_proc(f"/proc/{pid}/stat")
    return int(stat.rsplit(")", 1)[1].split()[19]) if stat else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    stat = _read_proc(f"/proc/{pid}/stat")
    return not (stat and stat.rsplit(")", 1)[1].split()[0] == "Z")  # killed, not yet reaped by its parent


def run_id() -> str | None:
    """torchrun's run id; None outside torchrun and for torchrun's default "none" (shared by unrelated jobs)."""
    value = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return value if value not in ("", "none") else None


def describe(holder: dict) -> str:
    text = f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"
    return text + (f", torchrun run id {holder['run_id']}" if holder.get("run_id") else "")


def _gone(holder: dict) -> str | None:
    """Why the holder is known to be gone, or None when it may be alive."""
    if holder.get("host") != socket.gethostname():
        return None
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return "its host has restarted since"
    pid = int(holder.get("pid", -1))
    if pid <= 0 or not _alive(pid):
        return "its process is gone"
    if holder.get("process_start") is not None and _process_start(pid) != holder["process_start"]:
        return "its pid now belongs to another process"
    return None


class RunLock:
    """The lock of one run directory (see the module docstring).  Example: with RunLock(log_dir): train()"""

    def __init__(self, log_dir: Path):
        self.path = Path(log_dir) / LOCK
        self.me = {"host": socket.gethostname(), "pid": os.getpid(),
                   "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "run_id": run_id(), "boot_id": _boot_id(), "process_start": _process_start(os.getpid()),
                   "token": uuid.uuid4().hex}

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _create(self) -> bool:
        """Put our lock in place if there is none (complete before its name appears: written, then linked)."""
        tmp = self.path.with_name(f"{LOCK}.{self.me['token']}")
        write_text_durably(tmp, json.dumps(self.me, indent=1))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
            fsync_dir(self.path.parent)

    def _holder(self) -> tuple[bytes, dict | None] | None:
        """The lock's bytes and content (None when unreadable), or None when there is no lock any more."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(raw)
            return raw, holder if isinstance(holder, dict) else None
        except ValueError:
            return raw, None

    def _remove_if_unchanged(self, raw: bytes) -> None:
        """Remove the lock judged stale, unless another run replaced it meanwhile (then it is put back)."""
        aside = self.path.with_name(f"{LOCK}.{self.me['token']}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_bytes() != raw:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink()

    def acquire(self) -> None:
        """Take the lock, take over a stale one, or raise RunDirectoryInUse naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self._create():
            found = self._holder()
            if found is None:
                continue
            raw, holder = found
            if holder is None:
                log.warning("%s is unreadable (a crash while it was written): taking it over", self.path)
            elif self.me["run_id"] and holder.get("run_id") == self.me["run_id"]:
                log.info("%s: a restart of torchrun run %s takes over its lock (%s)", self.path, self.me["run_id"],
                         describe(holder))
            elif (why := _gone(holder)) is not None:
                log.warning("%s: taking over the stale lock of a run that is gone (%s): %s", self.path,
                            describe(holder), why)
            else:
                restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
                hint = (" (a torchrun restart on another host takes its lock over only when the job has its own "
                        "--rdzv_id)") if restart else ""
                raise RunDirectoryInUse(
                    f"{self.path.parent} is in use by another run ({describe(holder)}): stop that run or choose "
                    f"another log_dir; if that run is gone for certain, delete {self.path}{hint}")
            self._remove_if_unchanged(raw)

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        found = self._holder()
        if found is not None and found[1] is not None and found[1].get("token") == self.me["token"]:
            self.path.unlink(missing_ok=True)
            fsync_dir(self.path.parent)


@contextlib.contextmanager
def hold_run_directory(log_dir: Path):
    """The run lock for the whole job: taken by rank 0; every rank raises RunDirectoryInUse if it is refused."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    lock = RunLock(log_dir) if not distributed or dist.get_rank() == 0 else None
    error: list[Exception | None] = [None]
    if lock is not None:
        try:
            lock.acquire()
        except (RunDirectoryInUse, OSError) as err:
            error = [err]
    if distributed:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise error[0]
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
