"""Training checkpoints: model (safetensors) + optimizer, scheduler, scaler, RNG states and data position, written
atomically (a temporary directory renamed into place) so a crash during a save leaves the previous one intact.

An FSDP run also writes its sharded model and optimizer states through torch.distributed.checkpoint (every rank
its own shards, under `shards/`); such a checkpoint resumes under any number of ranks, FSDP or not."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from safetensors.torch import load_file
from vlmo_fast.checkpoint.native import WEIGHTS, save_model
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


def save_training_state(directory: Path, model, optimizer, scheduler, scaler, position: dict, config: dict,
                        tag: str | None = None, rng: list[dict] | None = None) -> Path:
    """Write checkpoints/step_XXXXXXX (or checkpoints/<tag>) atomically and prune old step checkpoints.
    rng: every rank's RNG states (rng_states()); default this process's."""
    final, tmp = _paths(directory, tag or f"step_{position['step']:08d}")
    save_model(model, tmp, {"position": position})
    torch.save({"optimizer": optimizer.state_dict(), **_trainer_state(scheduler, scaler, position, rng)},
               tmp / TRAINER_STATE)
    return _commit(directory, tmp, final)


def save_sharded_training_state(directory: Path, model, optimizer, scheduler, scaler, position: dict,
                                tag: str | None = None, rng: list[dict] | None = None) -> Path:
    """The FSDP checkpoint, called on every rank: the shards through torch.distributed.checkpoint, and (rank 0) the
    full model in safetensors for evaluation and export, and the trainer state; renamed into place by rank 0."""
    main = dist.get_rank() == 0
    final, tmp = _paths(directory, tag or f"step_{position['step']:08d}", create=main)
    dist.barrier()  # the temporary directory is fresh before anyone writes into it
    full = full_state_dict(model, rank0_only=True)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / SHARDS))
    if main:
        save_model(model, tmp, {"position": position}, state_dict=full)
        torch.save({"sharded": True, **_trainer_state(scheduler, scaler, position, rng)}, tmp / TRAINER_STATE)
        _commit(directory, tmp, final)
    dist.barrier()
    return final


def _paths(directory: Path, name: str, create: bool = True) -> tuple[Path, Path]:
    final, tmp = directory / name, directory / f".{name}.tmp"
    if create:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    return final, tmp


def _trainer_state(scheduler, scaler, position: dict, rng: list[dict] | None) -> dict:
    return {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng or [_rng_state()],
            "position": position}


def _commit(directory: Path, tmp: Path, final: Path) -> Path:
    """Rename the complete temporary checkpoint into place, then keep only the newest KEEP step checkpoints."""
    if final.exists():  # replace: move the old one aside first so one complete copy always exists
        old = directory / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    steps = sorted(p for p in directory.glob("step_*") if p.is_dir())
    for p in steps[:-KEEP]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path:
    """The complete checkpoint with the highest step under `directory` ("last" included)."""
    candidates = []
    for p in Path(directory).glob("*"):
        if p.is_dir() and not p.name.startswith(".") and (p / TRAINER_STATE).is_file() and (p / WEIGHTS).is_file():
            step = torch.load(p / TRAINER_STATE, weights_only=True, map_location="cpu")["position"]["step"]
            candidates.append((step, p.name == "last", p))
    if not candidates:
        raise FileNotFoundError(f"no checkpoint to resume from in {directory} (resume=True needs the log_dir of an "
                                "earlier run)")
    return max(candidates)[2]


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
