"""Loading official checkpoints through the drop-in surface: the 64 -> 96 px fine-tuning load of the fixtures,
strict loading of official state dicts, the key manifests of the official archs, and clear failures."""
from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import FixtureSet, assert_all_outputs_match
from vlmo_fast.checkpoint import CheckpointMismatchError, load_model, save_model
from vlmo_fast.checkpoint.files import UntrustedCheckpointError
from vlmo_fast.compat import VLMo
from vlmo_fast.config import preset
from vlmo_fast.model.vlmo import VLMo as CoreVLMo
from vlmo_fast.ops.relpos import segment_index


@pytest.fixture(scope="module")
def from64(official_dir) -> FixtureSet:
    fx = FixtureSet.load(official_dir, "small_480_from64")
    fx.meta["inputs"] = json.loads((official_dir / "small_480.json").read_text())["inputs"]  # the same inputs
    return fx


def official_file(tmp_path, sd: dict, name: str = "src.ckpt", window: int | None = None, lt: int = 16) -> str:
    """Write sd like a released checkpoint: under "model", with the three index matrices."""
    sd = dict(sd)
    if window is not None:
        ni = window * window + 1
        sd["relative_position_index"] = segment_index(0, ni, window, 196)
        sd["text_relative_position_index"] = segment_index(lt, 0, window, 196)
        sd["text_imag_relative_position_index"] = segment_index(lt, ni, window, 196)
    path = tmp_path / name
    torch.save({"model": sd}, path)
    return str(path)


def test_fine_tuning_load_64_to_96(from64, tmp_path):
    """The official load_path load (table resize, token-type expansion, fresh task heads) gives the fixture's
    parameters; those parameters then give the fixture's outputs at 96 px."""
    src = from64.group("src64")
    cfg = dict(from64.meta["official_config"], load_path=official_file(tmp_path, src, window=4))
    model = VLMo(cfg, arch=from64.meta["arch"])
    params = from64.params
    got = model.state_dict()
    for key, ref in params.items():
        if key.startswith(("vqa_classifier.", "nlvr2_classifier.")):
            continue
        if key == "relative_position_bias_table":
            assert (got[key] - ref).abs().max() <= 1e-5, key
        else:
            assert torch.equal(got[key], ref), key
    assert model.load_report.missing == sorted(k for k in params if k.startswith(("vqa_", "nlvr2_")))
    assert model.load_report.unexpected == []

    model.load_state_dict(params, strict=True)
    assert_all_outputs_match(model.eval(), from64)


def test_official_state_dict_loads_strict_with_index_keys(official):
    model = VLMo(official.meta["official_config"], arch=official.meta["arch"])
    cfg = model.cfg
    sd = dict(official.params)
    sd["text_imag_relative_position_index"] = official.tensors["aux.text_imag_relative_position_index"]
    sd["relative_position_index"] = official.tensors["aux.relative_position_index"]
    model.load_state_dict(sd, strict=True)  # index matrices accepted and dropped
    ours = model.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in official.params.items()}
    assert cfg.window * cfg.window + 1 == official.tensors["aux.relative_position_index"].shape[0]


@pytest.mark.parametrize("arch", ["vlmo_base_patch16", "vlmo_base_plus_patch16", "vlmo_large_patch16"])
def test_key_manifest_of_official_arch(official_dir, arch):
    manifest = json.loads((official_dir / f"keys_{arch.split('_patch')[0].removeprefix('vlmo_')}.json").read_text())
    with torch.device("meta"):
        model = CoreVLMo(preset(arch, tasks=("itm", "itc", "mlm")))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: v["shape"] for k, v in manifest["state_dict"].items()}
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters_total"]


def test_extra_layer_is_refused_with_keys_and_preset(official, tmp_path):
    sd = dict(official.params)
    depth = official.meta["num_layers"]
    for k, v in list(sd.items()):
        if k.startswith(f"transformer.blocks.{depth - 1}."):
            sd[k.replace(f"blocks.{depth - 1}.", f"blocks.{depth}.")] = v
    cfg = dict(official.meta["official_config"], load_path=official_file(tmp_path, sd), test_only=True)
    with pytest.raises(CheckpointMismatchError, match=f"transformer.blocks.{depth}.attn.qkv.weight"):
        VLMo(cfg, arch=official.meta["arch"])


def test_shape_mismatch_names_key_and_fitting_preset(tmp_path):
    with torch.device("meta"):
        base = CoreVLMo(preset("vlmo_base_patch16"))
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in base.state_dict().items() if k.startswith("transformer.")}
    cfg = {"model_arch": "vlmo_small_patch16", "load_path": official_file(tmp_path, sd), "test_only": True}
    with pytest.raises(CheckpointMismatchError, match=r"(?s)looks like vlmo_base_patch16.*transformer\.cls_token"):
        VLMo(cfg)


def test_stage2_checkpoint_reports_missing_vl_experts(official, tmp_path):
    """A text-pretrained (stage-2) file has no VL experts: they stay at their initialisation and are reported."""
    sd = {k: v for k, v in official.params.items() if "mlp_vl" not in k and "norm2_vl" not in k}
    cfg = dict(official.meta["official_config"], load_path=official_file(tmp_path, sd, window=4, lt=12))
    model = VLMo(cfg, arch=official.meta["arch"])
    missing = model.load_report.missing
    assert any("mlp_vl.fc1.weight" in k for k in missing) and any("norm2_vl" in k for k in missing)
    assert "mlp_vl" in str(model.load_report)


class Note:
    """A custom object in a pickle: not loadable with weights_only=True."""


def test_untrusted_pickle_is_refused(official, tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save({"model": dict(official.params), "note": Note()}, path)
    cfg = dict(official.meta["official_config"], load_path=str(path), test_only=True)
    with pytest.raises(UntrustedCheckpointError, match="trusted"):
        VLMo(cfg, arch=official.meta["arch"])


def test_native_round_trip(official, tmp_path):
    model = VLMo(official.meta["official_config"], arch=official.meta["arch"])
    model.load_state_dict(official.params)
    save_model(model, tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt")
    assert again.cfg == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
