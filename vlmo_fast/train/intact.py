"""The checkpoint a resume starts from: the newest one whose files match its manifest.

A power loss can leave the newest checkpoint renamed into place with a truncated or zero-filled file; the older
checkpoints kept beside it are still whole, so the run falls back to the newest of those, with one warning that
names what was skipped and why, and never silently to nothing."""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch
import torch.distributed as dist

from vlmo_fast.checkpoint.manifest import MANIFEST, CorruptCheckpointError, read_manifest, verify
from .checkpointing import TRAINER_STATE

log = logging.getLogger(__name__)


def _claimed_step(path: Path) -> float:
    """The step a checkpoint says it holds (from its manifest, its name, or, before manifests, its trainer state);
    inf when unreadable, so a damaged checkpoint is tried, and reported, first."""
    try:
        manifest = read_manifest(path)
    except CorruptCheckpointError:
        manifest = None
    if manifest is not None and isinstance(manifest.get("step"), int):
        return manifest["step"]
    if m := re.fullmatch(r"step_(\d+)", path.name):
        return int(m.group(1))
    try:
        return torch.load(path / TRAINER_STATE, weights_only=True, map_location="cpu")["position"]["step"]
    except Exception:  # noqa: BLE001 - any damage: verification below says what is wrong
        return math.inf


def _candidates(directory: Path) -> list[Path]:
    """Checkpoint directories, newest first ("last" before a step checkpoint of the same step)."""
    found = [p for p in Path(directory).glob("*") if p.is_dir() and not p.name.startswith(".")
             and ((p / MANIFEST).is_file() or (p / TRAINER_STATE).is_file())]
    return sorted(found, key=lambda p: (_claimed_step(p), p.name == "last"), reverse=True)


def has_checkpoint(directory: Path) -> bool:
    """Whether `directory` holds a checkpoint, whole or damaged (not the temporary directory of a killed save)."""
    return bool(_candidates(directory))


def latest_checkpoint(directory: Path, hashes: bool = True) -> Path:
    """The newest intact checkpoint under `directory` ("last" included).  Each candidate's files are checked
    against its manifest (sizes, and sha256 unless hashes=False); damaged ones are skipped with one warning.
    Raises FileNotFoundError without checkpoints, CorruptCheckpointError when none is intact."""
    directory = Path(directory)
    skipped = []
    for path in _candidates(directory):
        if not (path / MANIFEST).exists():
            log.warning("%s has no %s (written before checkpoints had one): resuming from it unverified", path,
                        MANIFEST)
            break
        problems = verify(path, hashes)
        if not problems:
            break
        skipped.append(f"{directory.name}/{path.name}: {'; '.join(problems)}")
    else:
        if not skipped:
            raise FileNotFoundError(f"no checkpoint to resume from in {directory} (resume=True needs the log_dir of "
                                    "an earlier run)")
        raise CorruptCheckpointError(f"no intact checkpoint to resume from in {directory}: " + "; ".join(skipped))
    if skipped:
        log.warning("%s; resuming from the newest intact checkpoint, %s", "; ".join(skipped), path.name)
    return path


def resume_checkpoint(directory: Path, hashes: bool = True) -> Path:
    """latest_checkpoint, chosen (and verified) by rank 0 alone and sent to every rank."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return latest_checkpoint(directory, hashes)
    found: list = [None]
    if dist.get_rank() == 0:
        try:
            found = [str(latest_checkpoint(directory, hashes))]
        except (FileNotFoundError, CorruptCheckpointError) as err:
            found = [err]
    dist.broadcast_object_list(found, src=0)
    if isinstance(found[0], Exception):
        raise found[0]
    return Path(found[0])
