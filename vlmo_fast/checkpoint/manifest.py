"""The manifest of a checkpoint directory: the size and sha256 of every file (and the training step), written
last, so a checkpoint can be verified before it is loaded.

Verification always compares sizes (a stat per file: catches the truncated file of a power loss) and, unless
told not to, hashes (catches the zero-filled or corrupted file of the same size)."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from .durable import CHUNK, FileRecord, hash_file, write_text_durably

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files do not match its manifest (or with no intact checkpoint to fall back to)."""


def write_manifest(directory: Path, records: dict[str, FileRecord], step: int | None = None) -> FileRecord:
    """Write directory/manifest.json durably: call it after every other file of the checkpoint is on disk."""
    files = {name: {"size": r.size, "sha256": r.sha256} for name, r in sorted(records.items())}
    return write_text_durably(Path(directory) / MANIFEST, json.dumps({"format": FORMAT, "step": step,
                                                                      "files": files}, indent=1))


def read_manifest(directory: Path) -> dict | None:
    """The manifest, or None when the directory has none (written before manifests existed, or by hand)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes())
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("no 'files' table")
        return manifest
    except (ValueError, UnicodeDecodeError, AttributeError) as err:
        raise CorruptCheckpointError(f"{MANIFEST} is unreadable ({err})") from err


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _sizes(actual: int, expected: int) -> str:
    a, e = _size(actual), _size(expected)
    return f"{actual:,} of {expected:,} bytes" if a == e else f"{a} of {e}"


def _all_zero(path: Path) -> bool:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            if chunk.count(0) != len(chunk):
                return False
    return True


def _problem(directory: Path, name: str, entry: dict, hashes: bool) -> str | None:
    """What is wrong with one file of the manifest, or None."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        return f"{MANIFEST} names {name}, outside the checkpoint"
    path = Path(directory, *rel.parts)
    if not path.is_file():
        return f"{name} is missing"
    size = path.stat().st_size
    if size < entry["size"]:
        return f"{name} is truncated ({_sizes(size, entry['size'])})"
    if size > entry["size"]:
        return f"{name} is longer than written ({_sizes(size, entry['size'])})"
    if hashes and hash_file(path).sha256 != entry["sha256"]:
        how = "zero-filled" if _all_zero(path) else "corrupted"
        return f"{name} is {how} (its sha256 differs from the one recorded when it was written)"
    return None


def verify(directory: Path, hashes: bool = True, only: Iterable[str] | None = None) -> list[str]:
    """Everything wrong with a checkpoint directory against its manifest, e.g. ["model.safetensors is truncated
    (51 MB of 102 MB)"]; [] when intact.  `only`: check these files alone (each must be in the manifest).
    A directory without a manifest is reported as such."""
    try:
        manifest = read_manifest(directory)
    except CorruptCheckpointError as err:
        return [str(err)]
    if manifest is None:
        return [f"{MANIFEST} is missing"]
    files = manifest["files"]
    names = list(files) if only is None else list(only)
    problems = [f"{n} is not in {MANIFEST}" for n in names if n not in files]
    problems += [p for n in names if n in files and (p := _problem(Path(directory), n, files[n], hashes))]
    return problems


def check_intact(directory: Path, hashes: bool = True, only: Iterable[str] | None = None) -> None:
    """Raise CorruptCheckpointError naming the directory, the file and what is wrong.  A directory without a
    manifest (made before manifests existed, or by hand) loads with a warning that it is unverified."""
    if not (Path(directory) / MANIFEST).exists():
        log.warning("%s has no %s: loading it unverified", directory, MANIFEST)
        return
    problems = verify(directory, hashes, only)
    if problems:
        raise CorruptCheckpointError(f"{directory}: " + "; ".join(problems))
