"""Building the model of a run: architecture from the config, weights from load_path, stage-2 freezing."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from vlmo_fast.checkpoint import load_official
from vlmo_fast.checkpoint.manifest import check_intact
from vlmo_fast.checkpoint.native import CONFIG, WEIGHTS
from vlmo_fast.pretrained.resolve import resolve_load_path
from vlmo_fast.model.vlmo import VLMo
from vlmo_fast.official_config import model_config
from vlmo_fast.run_config import RunConfig
from .optim import freeze_for_text_pretraining

log = logging.getLogger(__name__)


def build_model(config: RunConfig, device: torch.device) -> VLMo:
    """The run's model on `device`.  load_path may be an official file (loaded as the official code does, with a
    report), the name of a released weight (`vlmo-fast pretrained`; fetched into the cache on first use) or a
    vlmo-fast checkpoint directory (model.safetensors + config.json, verified first)."""
    path = resolve_load_path(config.model.load_path)
    if path and Path(path).is_dir():
        if not (Path(path) / CONFIG).is_file():
            raise FileNotFoundError(f"{path} is a directory without {CONFIG}: not a vlmo-fast checkpoint")
        # the files it loads, against its manifest (hashes unless verify_checkpoint=False)
        check_intact(Path(path), hashes=config.checkpoint.verify_checkpoint, only=(WEIGHTS, CONFIG))
    official = config.replace(load_path=path).official()
    model = VLMo(model_config(official))
    if path:
        report = load_official(model, official, trusted=config.model.trust_checkpoint)
        log.info("checkpoint: %s", report)
    if "textmlm" in model.cfg.tasks:  # as the official run.py: whenever the task is text pre-training
        names = freeze_for_text_pretraining(model)
        log.info("stage 2: %d trainable tensors (text embeddings, text experts, MLM head, rel-pos table, norm)",
                 len(names))
    return model.to(device)
