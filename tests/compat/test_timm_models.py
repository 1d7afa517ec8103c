"""The official architecture names in timm's registry: the official create_model call builds our backbone with the
official keys and shapes.  Here timm cannot import (torchvision beside the CPU torch), so the registration is
exercised against a stand-in registry with timm's interface, and the real-timm test runs where timm imports."""
from __future__ import annotations

import importlib.machinery
import json
import sys
import types

import pytest
import torch

from vlmo_fast.compat import timm_models


def official_create_model(create_model, arch: str, config: dict):
    """The official vlmo_module.py call."""
    return create_model(arch, img_size=config["image_size"], pretrained=False, drop_rate=0,
                        drop_path_rate=config["drop_path_rate"], attn_drop_rate=0, drop_block_rate=None, config=config)


@pytest.fixture
def stand_in_timm(monkeypatch):
    """A module with timm's registry functions (is_model, register_model by function name, create_model dropping
    None arguments and passing pretrained_cfg / pretrained_cfg_overlay, as timm 0.9+ does)."""
    registry = {}
    models = types.ModuleType("timm.models")
    models.is_model = lambda name: name in registry
    models.register_model = lambda fn: registry.setdefault(fn.__name__, fn)

    def create_model(name, pretrained=False, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return registry[name](pretrained=pretrained, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs)

    models.create_model = create_model
    timm = types.ModuleType("timm")
    timm.models = models
    timm.__spec__ = importlib.machinery.ModuleSpec("timm", None)
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.models", models)
    return models, registry


@pytest.mark.parametrize("arch, keys", [("vlmo_base_patch16", "keys_base.json"),
                                        ("vlmo_base_plus_patch16", "keys_base_plus.json"),
                                        ("vlmo_large_patch16", "keys_large.json")])
def test_registered_names_build_the_official_backbone(stand_in_timm, official_dir, arch, keys):
    models, registry = stand_in_timm
    assert timm_models.register_with_timm()
    assert set(timm_models.OFFICIAL_ARCHS) <= set(registry)
    config = {"model_arch": arch, "image_size": 224, "drop_path_rate": 0.1}
    with torch.device("meta"):
        backbone = official_create_model(models.create_model, arch, config)
    manifest = json.loads((official_dir / keys).read_text())["state_dict"]
    theirs = {k.removeprefix("transformer."): v["shape"] for k, v in manifest.items() if k.startswith("transformer.")}
    assert {k: list(v.shape) for k, v in backbone.state_dict().items()} == theirs


def test_stage2_config_and_refusals(stand_in_timm):
    models, _ = stand_in_timm
    timm_models.register_with_timm()
    config = {"model_arch": "vlmo_base_patch16", "image_size": 384, "drop_path_rate": 0.0,
              "loss_names": {"textmlm": 1, "itm": 0, "itc": 0, "mlm": 0}}
    with torch.device("meta"):
        backbone = official_create_model(models.create_model, "vlmo_base_patch16", config)
    assert not any(".mlp_vl." in k for k in backbone.state_dict())  # textmlm: no VL expert, as official
    assert backbone.patch_embed.proj.weight.shape[0] == 768
    with pytest.raises(ValueError, match="from_pretrained"):
        models.create_model("vlmo_base_patch16", pretrained=True)
    with pytest.raises(ValueError, match="always 0"):
        models.create_model("vlmo_base_patch16", drop_rate=0.1)


def test_without_timm_nothing_is_registered(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    monkeypatch.setattr(timm_models.importlib.util, "find_spec", lambda name: None)
    assert timm_models.register_with_timm() is False


def test_real_timm_create_model(official_dir):
    try:
        import timm
    except Exception as err:  # noqa: BLE001 - timm absent, or its torchvision import fails beside this torch
        pytest.skip(f"timm does not import here: {type(err).__name__}")
    assert timm_models.register_with_timm()  # done on import of vlmo_fast.compat; repeating it is harmless

    with torch.device("meta"):
        backbone = official_create_model(timm.models.create_model, "vlmo_base_patch16",
                                         {"model_arch": "vlmo_base_patch16", "image_size": 224, "drop_path_rate": 0.1})
    assert len(backbone.blocks) == 12
