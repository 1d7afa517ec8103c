"""Files that survive a crash of the machine: written to a temporary name, fsynced, renamed, and the directory
fsynced, with the size and sha256 of every byte computed while it is written (no second pass over the disk).

Without the fsyncs a rename can reach the disk before the data it names: after a power loss the file exists
under its final name and is truncated or zero-filled."""
from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20  # bytes read at a time when a file is hashed from disk


@dataclass(frozen=True)
class FileRecord:
    """What was written: the size in bytes and the sha256 (hex) of the content."""

    size: int
    sha256: str


class HashingWriter:
    """A binary file object that hashes and counts what goes through it (torch.save and json accept it).

    torch.save swallows the exception of a failed write and later fails with an unrelated message, so the first
    OSError is kept in `error` for the caller to report (the real cause: a full disk, a quota)."""

    def __init__(self, file):
        self._file, self._hash, self.size = file, hashlib.sha256(), 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            written = self._file.write(view)
        except OSError as err:
            self.error = self.error or err
            raise
        self._hash.update(view)
        self.size += len(view)
        return written

    def flush(self) -> None:
        self._file.flush()

    def record(self) -> FileRecord:
        return FileRecord(self.size, self._hash.hexdigest())


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (a rename, a new file) durable.  Filesystems that cannot sync a directory
    (EINVAL: some network and FUSE mounts) are skipped: they give no stronger guarantee to ask for."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file that is appended to by other code (log.jsonl) to the disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_durably(path: Path, write: Callable[[HashingWriter], None]) -> FileRecord:
    """write(file) into `path`'s temporary name, fsync it, rename it into place and fsync the directory.  On any
    failure (a full disk) the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = None
    try:
        with open(tmp, "wb") as f:
            writer = HashingWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if writer is not None and writer.error is not None and writer.error is not err:
            raise writer.error from err
        raise
    fsync_dir(path.parent)
    return writer.record()


def write_text_durably(path: Path, text: str) -> FileRecord:
    """A text file (JSON) written durably."""
    return write_durably(path, lambda f: f.write(text.encode()))


def hash_file(path: Path) -> FileRecord:
    """The size and sha256 of a file already on disk (files written by other code, e.g. distributed shards)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileRecord(size, digest.hexdigest())
