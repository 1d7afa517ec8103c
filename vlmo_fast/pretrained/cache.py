"""The weight cache: files under their official names with their bytes as downloaded, and a manifest
(`manifest.json`) recording each file's size and the sha256 computed at its first download.

    $VLMO_FAST_CACHE            the cache directory (default: $XDG_CACHE_HOME/vlmo_fast or ~/.cache/vlmo_fast)
    $VLMO_FAST_MIRROR=URL       fetch from URL/<file name> instead of the official location
    $VLMO_FAST_OFFLINE=1        never use the network; a missing file is an error naming it
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".part"
HASH_CHUNK = 1 << 20


class DownloadError(ValueError):
    """A weight could not be fetched or verified (a ValueError, so the CLI prints it as one line)."""


class OfflineError(FileNotFoundError):
    """The network is forbidden (VLMO_FAST_OFFLINE=1) and the file is not in the cache."""


def cache_dir() -> Path:
    if os.environ.get("VLMO_FAST_CACHE"):
        return Path(os.environ["VLMO_FAST_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vlmo_fast"


def offline() -> bool:
    return os.environ.get("VLMO_FAST_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def source_url(file: str, official_url: str) -> str:
    """Where a file is fetched from: URL/<file name> under VLMO_FAST_MIRROR, else its official URL."""
    mirror = os.environ.get("VLMO_FAST_MIRROR", "").strip()
    return f"{mirror.rstrip('/')}/{file}" if mirror else official_url


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Record:
    """What the manifest knows of a cached file."""

    size: int
    sha256: str
    url: str
    downloaded: str


class Cache:
    """A cache directory and its manifest."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else cache_dir()

    def path(self, file: str) -> Path:
        return self.root / file

    def partial(self, file: str) -> Path:
        return self.root / (file + PARTIAL_SUFFIX)

    def _manifest(self) -> dict:
        path = self.root / MANIFEST
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DownloadError(f"cache manifest {path} is not valid JSON ({err}); delete it to start over "
                                f"(the cached files are then checked against new downloads)") from err

    def record(self, file: str) -> Record | None:
        entry = self._manifest().get(file)
        return Record(**entry) if entry else None

    def write_record(self, file: str, record: Record) -> None:
        manifest = self._manifest()
        manifest[file] = record.__dict__
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, self.root / MANIFEST)

    def problem(self, file: str) -> str | None:
        """Why the cached file may not be used (missing, unrecorded, wrong size, wrong sha256), or None."""
        path, rec = self.path(file), self.record(file)
        if not path.is_file():
            return f"{path} is not in the cache"
        if rec is None:
            return f"{path} has no record in {self.root / MANIFEST}"
        size = path.stat().st_size
        if size != rec.size:
            return f"{path} has {size} bytes, the manifest records {rec.size} (truncated or replaced)"
        digest = sha256_of(path)
        if digest != rec.sha256:
            return f"{path} has sha256 {digest}, the manifest records {rec.sha256} (corrupt)"
        return None

    def adopt(self, file: str, url: str) -> None:
        """Record a file placed in the cache by hand (offline use): its size and sha256 as found."""
        path = self.path(file)
        self.write_record(file, Record(size=path.stat().st_size, sha256=sha256_of(path), url=url,
                                       downloaded=f"placed by hand, recorded {time.strftime('%Y-%m-%dT%H:%M:%S')}"))
