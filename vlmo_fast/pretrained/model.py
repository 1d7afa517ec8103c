"""`from_pretrained`: a registered weight's name, an official checkpoint file or a vlmo-fast checkpoint
directory -> the core VLMo model with the weights loaded and a report of what was converted or left out."""
from __future__ import annotations

from pathlib import Path

from torch import Tensor

from vlmo_fast.checkpoint.convert import TABLE_KEY, official_pretrained_load, window_from_table_rows
from vlmo_fast.checkpoint.files import read_checkpoint
from vlmo_fast.checkpoint.load import guess_arch, load_into
from vlmo_fast.checkpoint.native import CONFIG, load_model
from vlmo_fast.config import ARCHS, OBJECTIVES, preset
from vlmo_fast.model.vlmo import VLMo
from .cache import Cache
from .registry import PRETRAINED, PretrainedWeight
from .resolve import cached_file

_TEXT_POS = "text_embeddings.position_embeddings.weight"
_POS_EMBED = "transformer.pos_embed"


def heads_of(sd: dict[str, Tensor]) -> tuple[str, ...]:
    """The objectives whose heads a VLMo state dict holds (official loss_names)."""
    has = lambda prefix: any(k.startswith(prefix) for k in sd)  # noqa: E731
    if has("vqa_classifier."):
        return ("vqa",)
    if has("nlvr2_classifier."):
        return ("nlvr2",)
    vl_expert = any(".mlp_vl." in k for k in sd)
    heads = [t for t, prefix in (("itm", "itm_score."), ("itc", "itc_vl_text_proj.")) if has(prefix)]
    if has("itc_text_proj.") and "itc" not in heads:
        heads.append("irtr")
    if has("mlm_score."):
        heads.append("mlm" if vl_expert else "textmlm")
    return tuple(heads) or ("itm", "itc", "mlm")


def _describe_file(sd: dict[str, Tensor], path: Path) -> PretrainedWeight:
    """What an official file fits: arch from its shapes, heads from its keys, grid and text length from its tables."""
    arch = guess_arch(sd)
    if arch is None:
        raise ValueError(f"{path}: no VLMo architecture of {', '.join(ARCHS)} fits its tensors "
                         "(a BEiT file loads by its registered name, with the text pre-training conversion)")
    if TABLE_KEY in sd:
        window = window_from_table_rows(sd[TABLE_KEY].shape[0])
    elif _POS_EMBED in sd:
        window = round((sd[_POS_EMBED].shape[1] - 1) ** 0.5)
    else:
        window = 224 // 16
    text_len = sd[_TEXT_POS].shape[0] if _TEXT_POS in sd else 40
    return PretrainedWeight(name=path.stem, file=path.name, url=str(path), arch=arch,
                            image_size=window * ARCHS[arch].get("patch_size", 16), heads=heads_of(sd), task=None,
                            max_text_len=text_len)


def from_pretrained(name_or_path: str, *, image_size: int | None = None, max_text_len: int | None = None,
                    heads: tuple[str, ...] | None = None, trusted: bool = False,
                    cache: Cache | None = None) -> VLMo:
    """The core VLMo model of a registered weight (downloaded into the cache on first use), an official checkpoint
    file, or a vlmo-fast checkpoint directory, in eval mode.

    By default the model has the weight's own image size, text length and heads; other values convert the file as
    the official fine-tuning load does (resized position tables, truncated text positions); heads the file lacks
    start fresh.  `model.load_report` says what was converted and what was left at initialisation.

    Example: model = vlmo_fast.from_pretrained("vlmo_base_patch16_384_coco")
    """
    path = Path(name_or_path)
    if path.is_dir() and (path / CONFIG).is_file() and image_size is max_text_len is heads is None:
        return load_model(path).eval()
    if path.exists():
        sd = read_checkpoint(path, trusted=trusted)
        weight = _describe_file(sd, path)
    elif name_or_path in PRETRAINED:
        weight = PRETRAINED[name_or_path]
        path = cached_file(name_or_path, cache)
        sd = read_checkpoint(path, trusted=trusted)
    else:
        raise FileNotFoundError(f"{name_or_path!r} is neither a file, a vlmo-fast checkpoint directory, nor a "
                                f"registered weight ({', '.join(PRETRAINED)})")
    heads = tuple(t for t in OBJECTIVES if t in (heads or weight.heads))  # the official loss_names order
    # A text pre-training (stage-2) model has no VL expert in any layer, as in the official code.
    stage2 = {"vl_start": ARCHS[weight.arch]["depth"]} if "textmlm" in heads else {}
    model = VLMo(preset(weight.arch, image_size=image_size or weight.image_size,
                        max_text_len=max_text_len or weight.max_text_len, drop_path_rate=0.0, tasks=heads,
                        **stage2))
    cfg = model.cfg
    sd, notes = official_pretrained_load(sd, max_text_len=cfg.max_text_len, window=cfg.window,
                                         l0=cfg.max_text_len_of_initckpt, textmlm=weight.beit,
                                         num_layers=cfg.depth, num_heads=cfg.num_heads)
    model.load_report = load_into(model, sd, [f"loaded {path}"] + notes)
    return model.eval()

