"""vlmo-fast's own checkpoint format: `model.safetensors` plus `config.json` (the ModelConfig) in a directory, and
`manifest.json` (sizes and sha256 of the files, verified before a load)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from vlmo_fast.config import ModelConfig
from .durable import FileRecord, write_durably, write_text_durably
from .manifest import check_intact, write_manifest
from .safetensors_stream import write_safetensors

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_model(model: torch.nn.Module, directory: str | os.PathLike, extra: dict | None = None,
               state_dict: dict | None = None, records: dict[str, FileRecord] | None = None) -> Path:
    """Write the model's state dict (or `state_dict`, e.g. gathered from shards) and config durably; `extra`
    (JSON-able) is stored beside the config.  The files' sizes and hashes go into `records` when given (the caller
    writes a manifest covering more files), else into the directory's manifest."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    written = {WEIGHTS: write_durably(d / WEIGHTS, lambda f: write_safetensors(sd, f))}
    meta = {"model": dataclasses.asdict(model.cfg), **(extra or {})}
    written[CONFIG] = write_text_durably(d / CONFIG, json.dumps(meta, indent=1))
    if records is None:
        write_manifest(d, written)
    else:
        records.update(written)
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


def load_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu", verify: bool = True):
    """Rebuild a saved model (strict: every key must match) after checking its files against the manifest (sizes,
    and hashes unless verify=False)."""
    from vlmo_fast.model.vlmo import VLMo

    check_intact(Path(directory), hashes=verify, only=(WEIGHTS, CONFIG))
    cfg, _ = read_config(directory)
    model = VLMo(cfg)
    sd = load_file(str(Path(directory) / WEIGHTS), device=str(map_location))
    model.load_state_dict(sd, strict=True)
    return model
