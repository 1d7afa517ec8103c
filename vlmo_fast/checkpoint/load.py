"""Loading checkpoints into a model: the official `load_path` semantics (spec 4.2) with a report of what was
left out, and clear failures for checkpoints of another architecture."""
from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vlmo_fast.config import ARCHS
from .convert import INDEX_KEYS, official_pretrained_load
from .files import read_checkpoint
from .native import WEIGHTS

TOKEN_TYPES = "token_type_embeddings.weight"
# Left fresh on purpose by the official fine-tuning load: task heads, created after loading.
FRESH_HEADS = ("vqa_classifier.", "nlvr2_classifier.")
# Checkpoint keys known to have no place in the model (BEiT leftovers, the index matrices).
KNOWN_LEFTOVERS = re.compile(r"^(transformer\.fc_norm\.|transformer\.head\.|head\.|fc_norm\.|"
                             r"(transformer\.)?blocks\.\d+\.attn\.relative_position_(index|bias_table)$|"
                             r"(text_|text_imag_)?relative_position_index$)")

class CheckpointMismatchError(ValueError):
    """The checkpoint is of another architecture than the model."""


@dataclass
class LoadReport:
    """What a load did: keys the model kept from its initialisation, checkpoint keys it ignored, conversions."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = list(self.notes)
        if self.missing:
            lines.append(f"kept at initialisation ({len(self.missing)}): {self.missing}")
        if self.unexpected:
            lines.append(f"ignored checkpoint keys ({len(self.unexpected)}): {self.unexpected}")
        return "\n".join(lines) or "all keys loaded"


def guess_arch(sd: dict[str, Tensor]) -> str | None:
    """The preset whose width, depth and VL-expert start fit a state dict, if any."""
    if "transformer.cls_token" not in sd:
        return None
    dim = sd["transformer.cls_token"].shape[-1]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    vl = [int(m.group(1)) for k in sd if (m := re.match(r"transformer\.blocks\.(\d+)\.mlp_vl\.", k))]
    for name, arch in ARCHS.items():
        if arch["embed_dim"] == dim and arch["depth"] == depth and (not vl or min(vl) == arch["vl_start"]):
            return name
    return None


def check_compatible(model: nn.Module, sd: dict[str, Tensor]) -> None:
    """Fail, naming the keys and a preset that would fit, on tensors of another shape or on backbone keys the
    model lacks (an extra layer, a VL expert where the model has none)."""
    own = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
             if k in own and v.shape != own[k].shape and k != TOKEN_TYPES]
    extra = [k for k in sd if k not in own and k.startswith(("transformer.", "relative_position_bias_table"))
             and not KNOWN_LEFTOVERS.match(k)]
    if wrong or extra:
        fit = guess_arch(sd)
        hint = f"; the checkpoint looks like {fit}" if fit else ""
        raise CheckpointMismatchError(
            "checkpoint does not fit the model" + hint
            + (f"\n  shape mismatches: {wrong}" if wrong else "")
            + (f"\n  backbone keys the model lacks: {extra}" if extra else ""))


def load_into(model: nn.Module, sd: dict[str, Tensor], notes: list[str] | None = None) -> LoadReport:
    """Load a converted state dict (strict=False after check_compatible) and report what was left out."""
    sd = dict(sd)
    own_types = model.state_dict().get(TOKEN_TYPES)
    if TOKEN_TYPES in sd and own_types is not None and sd[TOKEN_TYPES].shape[0] == 2 and own_types.shape[0] == 3:
        # NLVR2: the third modality row (second image) starts as a copy of the image row (official order).
        sd[TOKEN_TYPES] = torch.cat([sd[TOKEN_TYPES], sd[TOKEN_TYPES][1:2]])
        notes = (notes or []) + ["expanded token_type_embeddings to 3 rows (row 2 := row 1) for NLVR2"]
    check_compatible(model, sd)
    result = model.load_state_dict(sd, strict=False)
    return LoadReport(sorted(result.missing_keys), sorted(k for k in result.unexpected_keys), list(notes or []))


def load_official(model: nn.Module, config: dict, trusted: bool = False) -> LoadReport:
    """The official `load_path` load (an official file, or a vlmo-fast checkpoint directory): with test_only the
    file is loaded as it is (no resizing); otherwise it is
    converted for the model's text length and grid (textpt conversion for textmlm, text positions, image
    positions, relative-position table) and the task heads vqa/nlvr2 stay fresh."""
    cfg = model.cfg
    path = Path(config["load_path"])
    sd = read_checkpoint(path / WEIGHTS if path.is_dir() else path, trusted=trusted)
    notes = [f"loaded {config['load_path']}"]
    if config.get("test_only"):
        sd = {k: v for k, v in sd.items() if k not in INDEX_KEYS}
    else:
        sd, conv = official_pretrained_load(
            sd, max_text_len=cfg.max_text_len, window=cfg.window, l0=cfg.max_text_len_of_initckpt,
            textmlm="textmlm" in cfg.tasks, num_layers=cfg.depth, num_heads=cfg.num_heads)
        notes += conv
        fresh = [k for k in sd if k.startswith(FRESH_HEADS)]
        sd = {k: v for k, v in sd.items() if not k.startswith(FRESH_HEADS)}
        if fresh:
            notes.append(f"left the task heads fresh for fine-tuning ({len(fresh)} keys of the file not loaded)")
    report = load_into(model, sd, notes)
    report.unexpected = [k for k in report.unexpected if not KNOWN_LEFTOVERS.match(k)]
    return report
