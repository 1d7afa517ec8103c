"""Training checkpoints: model (safetensors) + optimizer, scheduler, scaler, RNG states and data position, written
atomically (a temporary directory renamed into place) so a crash during a save leaves the previous one intact."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from vlmo_fast.checkpoint.native import WEIGHTS, save_model
from safetensors.torch import load_file

TRAINER_STATE = "trainer.pt"
KEEP = 2  # step checkpoints kept besides "last"


def _rng_state() -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(directory: Path, model, optimizer, scheduler, scaler, position: dict, config: dict,
                        tag: str | None = None) -> Path:
    """Write checkpoints/step_XXXXXXX (or checkpoints/<tag>) atomically and prune old step checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    name = tag or f"step_{position['step']:08d}"
    final, tmp = directory / name, directory / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, {"position": position})
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": _rng_state(), "position": position}, tmp / TRAINER_STATE)
    if final.exists():  # replace: move the old one aside first so one complete copy always exists
        old = directory / f".{name}.old"
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
    """Restore everything save_training_state wrote; returns the data position."""
    model.load_state_dict(load_file(str(path / WEIGHTS), device=str(device)), strict=True)
    state = torch.load(path / TRAINER_STATE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    return state["position"]
