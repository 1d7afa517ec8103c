"""Training checkpoints: model (safetensors) + optimizer, scheduler, scaler, RNG states and data position, written
atomically (a temporary directory renamed into place) so a crash during a save leaves the previous one intact, and
durably (every file and directory fsynced, a manifest of sizes and sha256 written last) so a crash of the machine
leaves no checkpoint that looks whole and is not.  A failed save (a full disk) removes its temporary directory and
raises CheckpointSaveError naming the cause.

An FSDP run also writes its sharded model and optimizer states through torch.distributed.checkpoint (every rank
its own shards, under `shards/`); such a checkpoint resumes under any number of ranks, FSDP or not."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from safetensors.torch import load_file
from vlmo_fast.checkpoint.durable import FileRecord, fsync_dir, hash_file, write_durably
from vlmo_fast.checkpoint.manifest import write_manifest
from vlmo_fast.checkpoint.native import WEIGHTS, save_model
from vlmo_fast.errors import RunError
from .sharding import full_state_dict, is_sharded

TRAINER_STATE = "trainer.pt"
SHARDS = "shards"  # the torch.distributed.checkpoint directory of an FSDP checkpoint
KEEP = 2  # step checkpoints kept besides "last"


def _rng_state() -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_states() -> list[dict]:
    """Every rank's RNG states, in rank order (a collective under torch.distributed), so that each rank of a resumed
    run continues its own random streams (drop path, augmentation)."""
    mine = _rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointSaveError(RunError):
    """A checkpoint could not be written (a full disk, a quota, an I/O error); its temporary directory is removed
    and the previous checkpoints are untouched."""


def save_training_state(directory: Path, model, optimizer, scheduler, scaler, position: dict, config: dict,
                        tag: str | None = None, rng: list[dict] | None = None) -> Path:
    """Write checkpoints/step_XXXXXXX (or checkpoints/<tag>) durably and atomically, then prune old step
    checkpoints (rank 0 only).  rng: every rank's RNG states (rng_states()); default this process's.
    A failure removes the temporary directory and raises CheckpointSaveError naming the cause."""
    name = tag or f"step_{position['step']:08d}"
    with _removed_on_failure(directory, name) as tmp:
        state = {"optimizer": optimizer.state_dict(), **_trainer_state(scheduler, scaler, position, rng)}
        return _write_checkpoint(directory, tmp, name, model, position, state, {})


def save_replicated_training_state(directory: Path, model, optimizer, scheduler, scaler, position: dict,
                                   tag: str | None = None, rng: list[dict] | None = None) -> None:
    """save_training_state on rank 0, called on every rank: all ranks return, or all raise CheckpointSaveError."""
    error = None
    if not _distributed() or dist.get_rank() == 0:
        try:
            save_training_state(directory, model, optimizer, scheduler, scaler, position, {}, tag, rng)
        except CheckpointSaveError as err:
            error = str(err)
    _raise_if_any(error)


def save_sharded_training_state(directory: Path, model, optimizer, scheduler, scaler, position: dict,
                                tag: str | None = None, rng: list[dict] | None = None) -> Path:
    """The FSDP checkpoint, called on every rank: the shards through torch.distributed.checkpoint (each rank hashes
    its own files for the manifest), and (rank 0) the full model in safetensors for evaluation and export, the
    trainer state and the manifest; renamed into place by rank 0.  A failure on any rank raises
    CheckpointSaveError on every rank."""
    main, name = dist.get_rank() == 0, tag or f"step_{position['step']:08d}"
    tmp = directory / f".{name}.tmp"
    # agreed by all ranks, which is also the barrier: the temporary directory is fresh before anyone writes into it
    error = _first_error(_attempt(lambda: _fresh(tmp)) if main else None)
    full = full_state_dict(model, rank0_only=True)
    model_state, optim_state = get_state_dict(model, optimizer)
    shards: dict[str, FileRecord] = {}
    if error is None:
        error = _attempt(lambda: shards.update(_write_shards(tmp / SHARDS, model_state, optim_state)))
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (shards, error))  # every rank's shard records, and whether it failed
    error = next((e for _, e in parts if e), None)
    if main and error is None:
        records = {n: r for part, _ in parts for n, r in part.items()}
        state = {"sharded": True, **_trainer_state(scheduler, scaler, position, rng)}
        error = _attempt(lambda: _write_checkpoint(directory, tmp, name, model, position, state, records, full))
    if main and error is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    _raise_if_any(error and _failure(directory, name, error))
    return directory / name


def _write_shards(shards: Path, model_state: dict, optim_state: dict) -> dict[str, FileRecord]:
    """This rank's part of the sharded states, and the records of the files it wrote."""
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(shards))
    return {f"{SHARDS}/{n}": r for n, r in _own_shard_records(shards, dist.get_rank()).items()}


def _write_checkpoint(directory: Path, tmp: Path, name: str, model, position: dict, state: dict,
                      records: dict[str, FileRecord], state_dict: dict | None = None) -> Path:
    """Rank 0's files into the temporary directory (model, trainer state; the other shard files hashed), the
    manifest last, then the rename into place."""
    if (tmp / SHARDS).is_dir():
        records.update(_other_shard_records(tmp / SHARDS, records))
        fsync_dir(tmp / SHARDS)
    save_model(model, tmp, {"position": position}, state_dict=state_dict, records=records)
    records[TRAINER_STATE] = write_durably(tmp / TRAINER_STATE, lambda f: torch.save(state, f))
    write_manifest(tmp, records, position["step"])
    return _commit(directory, tmp, directory / name)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _attempt(write) -> str | None:
    """Run one stage of a distributed save; its error as text (every rank must learn of it, or the others would
    wait for this one forever)."""
    try:
        write()
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - reported on every rank as CheckpointSaveError
        return _cause(err)
    return None


def _cause(err: BaseException) -> str:
    """What to name of a failure: the OSError behind it, per rank for a torch.distributed.checkpoint failure (a
    BaseException, which gathers every rank's error)."""
    if isinstance(err, CheckpointException):
        return "; ".join(f"rank {rank}: {_cause(e)}" for rank, (e, _) in sorted(err.failures.items()))
    return str(_io_cause(err) or err)


def _first_error(error: str | None) -> str | None:
    """The first rank's error, when any rank has one (a collective under torch.distributed)."""
    if not _distributed():
        return error
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e), None)


def _raise_if_any(error: str | None) -> None:
    """Raise CheckpointSaveError on every rank when any rank failed (a collective under torch.distributed)."""
    error = _first_error(error)
    if error:
        raise CheckpointSaveError(error)


def _io_cause(err: BaseException) -> OSError | None:
    """The OSError (ENOSPC, EDQUOT, EIO) behind an exception, if any: the cause worth naming."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def _fresh(tmp: Path) -> None:
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()


def _failure(directory: Path, name: str, cause) -> str:
    """The message of a failed save: what failed, the cause, and the checkpoint that is still there."""
    kept = sorted((p for p in directory.glob("*") if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime)
    previous = f"the previous checkpoint ({kept[-1].name}) is untouched" if kept else "there is no earlier checkpoint"
    return f"checkpoint {name} could not be written in {directory}: {cause}; {previous}"


@contextlib.contextmanager
def _removed_on_failure(directory: Path, name: str):
    """Yield the fresh temporary directory of checkpoint `name`; on a failure remove it (the previous checkpoints
    stay as they were) and raise CheckpointSaveError naming the cause (an interrupt is re-raised as it is)."""
    tmp = directory / f".{name}.tmp"
    try:
        _fresh(tmp)
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception):
            raise CheckpointSaveError(_failure(directory, name, _io_cause(err) or err)) from err
        raise


def _own_shard_records(shards: Path, rank: int) -> dict[str, FileRecord]:
    """The files torch.distributed.checkpoint's writer wrote for this rank (named __<rank>_<n>.distcp), hashed
    here, where they were just written (still in the page cache), so rank 0 does not read every rank's files."""
    return {p.name: hash_file(p) for p in sorted(shards.glob(f"__{rank}_*")) if p.is_file()}


def _other_shard_records(shards: Path, known: dict[str, FileRecord]) -> dict[str, FileRecord]:
    """Every other file under shards/ (the metadata the coordinator wrote), hashed by rank 0."""
    return {f"{SHARDS}/{p.relative_to(shards).as_posix()}": hash_file(p) for p in sorted(shards.rglob("*"))
            if p.is_file() and f"{SHARDS}/{p.relative_to(shards).as_posix()}" not in known}


def _trainer_state(scheduler, scaler, position: dict, rng: list[dict] | None) -> dict:
    return {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng or [_rng_state()],
            "position": position}


def _commit(directory: Path, tmp: Path, final: Path) -> Path:
    """Rename the complete (fsynced) temporary checkpoint into place and fsync the directory, so the new name is
    on disk only with its data; then keep only the newest KEEP step checkpoints."""
    fsync_dir(tmp)
    if final.exists():  # replace: move the old one aside first so one complete copy always exists
        old = directory / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
        fsync_dir(directory)
    steps = sorted(p for p in directory.glob("step_*") if p.is_dir())
    for p in steps[:-KEEP]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_training_state(path: Path, model, optimizer, scheduler, scaler, device) -> dict:
    """Restore everything a save wrote; returns the data position.  A sharded (FSDP) checkpoint loads into any
    layout; a replicated one into a replicated model only."""
    state = torch.load(path / TRAINER_STATE, weights_only=True, map_location="cpu")
    if state.get("sharded"):
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.load({"model": model_state}, checkpoint_id=str(path / SHARDS))  # strict: every weight must be there
        # Parameters that never had a gradient (e.g. the text position table outside base_plus) have no saved
        # optimizer state, while get_state_dict initialised one for every parameter: load the rest, then drop those.
        dcp.load({"optimizer": optim_state}, checkpoint_id=str(path / SHARDS),
                 planner=DefaultLoadPlanner(allow_partial_load=True))
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
        saved = dcp.FileSystemReader(str(path / SHARDS)).read_metadata().state_dict_metadata
        for name, param in model.named_parameters():
            if not any(k.startswith(f"optimizer.state.{name}.") for k in saved):
                optimizer.state.pop(param, None)
    elif any(is_sharded(p) for p in model.parameters()):
        raise ValueError(f"{path} was written by an unsharded run and its optimizer state cannot be resharded: "
                         f"resume it with strategy=ddp, or start from its weights with load_path={path}")
    else:
        model.load_state_dict(load_file(str(path / WEIGHTS), device=str(device)), strict=True)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    _set_rng_state(rng[rank % len(rng)])  # a run resumed on more ranks than it had reuses the first ones' states
    return state["position"]
