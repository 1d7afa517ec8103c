"""vlmo-fast's own checkpoint format: `model.safetensors` plus `config.json` (the ModelConfig) in a directory."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlmo_fast.config import ModelConfig

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def atomic_write(path: Path, write) -> None:
    """write(tmp_path) then rename over `path`, so a crash never leaves a half-written file under its name."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_model(model: torch.nn.Module, directory: str | os.PathLike, extra: dict | None = None,
               state_dict: dict | None = None) -> Path:
    """Write the model's state dict (or `state_dict`, e.g. gathered from shards) and config; `extra` (JSON-able) is
    stored beside the config."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    atomic_write(d / WEIGHTS, lambda p: save_file(sd, str(p)))
    meta = {"model": dataclasses.asdict(model.cfg), **(extra or {})}
    atomic_write(d / CONFIG, lambda p: p.write_text(json.dumps(meta, indent=1)))
    return d


def read_config(directory: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """The ModelConfig of a saved model and the rest of its config.json."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a vlmo-fast checkpoint directory")
    meta = json.loads(path.read_text())
    fields = dict(meta.pop("model"))
    fields["tasks"] = tuple(fields["tasks"])
    return ModelConfig(**fields), meta


def load_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild a saved model (strict: every key must match)."""
    from vlmo_fast.model.vlmo import VLMo

    cfg, _ = read_config(directory)
    model = VLMo(cfg)
    sd = load_file(str(Path(directory) / WEIGHTS), device=str(map_location))
    model.load_state_dict(sd, strict=True)
    return model
