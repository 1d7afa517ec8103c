"""The official architecture names in timm's model registry, as the official multiway_transformer.py registers
them (`@register_model`), so the official `timm.models.create_model(config["model_arch"], img_size=...,
pretrained=False, drop_rate=0, drop_path_rate=..., attn_drop_rate=0, drop_block_rate=None, config=config)` builds
vlmo-fast's backbone (the module under the model's `transformer.` keys).

Registration happens on `import vlmo_fast.compat` where timm is installed and imports; it is skipped quietly
where timm is absent and with one warning where importing it fails (timm imports torchvision, which fails beside a
CPU-only torch of another build).
"""
from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

from vlmo_fast.model.transformer import MultiWayTransformer
from .config import ARCH_KEYS, model_config

log = logging.getLogger(__name__)

OFFICIAL_ARCHS = ("vlmo_base_patch16", "vlmo_base_plus_patch16", "vlmo_large_patch16")
# Bookkeeping arguments timm's create_model passes to every entry point; they carry nothing for these models.
TIMM_BOOKKEEPING = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def backbone_factory(arch: str) -> Callable[..., MultiWayTransformer]:
    """A timm-style entry point named `arch` taking the official create_model keyword arguments."""

    def build(pretrained: bool = False, img_size: int = 224, drop_path_rate: float = 0.0, config: dict | None = None,
              drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_block_rate=None, **arch_kwargs):
        if pretrained:
            raise ValueError(f"{arch}: timm holds no weights for it (neither does the official registry); load a "
                             "released checkpoint with vlmo_fast.from_pretrained(NAME) or load_path=NAME")
        if drop_rate or attn_drop_rate or drop_block_rate:
            raise ValueError(f"{arch}: drop_rate, attn_drop_rate and drop_block_rate are always 0/None in VLMo "
                             f"(got {drop_rate}, {attn_drop_rate}, {drop_block_rate})")
        for key in TIMM_BOOKKEEPING:
            arch_kwargs.pop(key, None)
        unknown = sorted(set(arch_kwargs) - set(ARCH_KEYS))
        if unknown:
            raise TypeError(f"{arch}: unexpected keyword arguments {unknown}; known: {sorted(ARCH_KEYS)}")
        cfg = model_config({**(config or {}), "model_arch": arch, "image_size": img_size,
                            "drop_path_rate": drop_path_rate})
        return MultiWayTransformer(cfg.replace(**{ARCH_KEYS[k]: v for k, v in arch_kwargs.items()}))

    build.__name__ = build.__qualname__ = arch
    build.__module__ = __name__
    build.__doc__ = f"The {arch} backbone of vlmo-fast (official name and keyword arguments)."
    return build


# Module-level entry points: timm's register_model looks a function up in its module by name.
for _arch in OFFICIAL_ARCHS:
    globals()[_arch] = backbone_factory(_arch)


def register_with_timm() -> bool:
    """Register the official names with timm's registry; False (nothing done) where timm cannot be used."""
    if importlib.util.find_spec("timm") is None:
        return False
    try:
        from timm.models import is_model, register_model
    except Exception as err:  # noqa: BLE001 - any failure inside timm's import (torchvision) means: no timm here
        log.warning("timm is installed but does not import (%s: %s); the VLMo architectures are not registered "
                    "with it", type(err).__name__, err)
        return False
    for arch in OFFICIAL_ARCHS:
        if not is_model(arch):
            register_model(globals()[arch])
    return True
