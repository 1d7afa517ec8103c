"""read_checkpoint: file formats, the official wrapper unwrapping (spec 4.2 step 1) and weights_only safety."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vlmo_fast.checkpoint.files import UntrustedCheckpointError, read_checkpoint, unwrap_state_dict


class NotATensor:
    """A custom class: pickling it makes a checkpoint that weights_only loading must refuse."""

    def __init__(self, value: int = 3):
        self.value = value


def _sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"relative_position_bias_table": torch.randn(446, 2, generator=g),
            "text_embeddings.position_ids": torch.arange(7).unsqueeze(0),
            "transformer.blocks.0.attn.qkv.weight": torch.randn(12, 4, generator=g)}


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for k, v in expected.items():
        assert actual[k].dtype == v.dtype and torch.equal(actual[k], v), k


def test_safetensors_round_trip(tmp_path):
    sd = _sd()
    save_file(sd, str(tmp_path / "m.safetensors"))
    _assert_same(read_checkpoint(tmp_path / "m.safetensors"), sd)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
@pytest.mark.parametrize("wrapper", ["state_dict", "model", None])
def test_torch_wrappers(tmp_path, suffix, wrapper):
    sd = _sd()
    path = tmp_path / f"m{suffix}"
    torch.save(sd if wrapper is None else {wrapper: sd, "epoch": 3}, path)
    _assert_same(read_checkpoint(path), sd)


def test_deepspeed_module_prefix_stripped(tmp_path):
    sd = _sd()
    torch.save({"module": {"module." + k: v for k, v in sd.items()}, "global_steps": 10}, tmp_path / "ds.pt")
    _assert_same(read_checkpoint(tmp_path / "ds.pt"), sd)


def test_wrapper_order_is_official():
    """"state_dict" wins over "model" (the official loop takes the first of state_dict, module, model)."""
    a, b = {"x": torch.zeros(1)}, {"y": torch.ones(1)}
    assert list(unwrap_state_dict({"model": b, "state_dict": a})) == ["x"]


def test_weights_only_refuses_custom_class_unless_trusted(tmp_path):
    sd = _sd()
    path = tmp_path / "unsafe.pt"
    torch.save({"model": sd, "extra": NotATensor()}, path)
    with pytest.raises(UntrustedCheckpointError, match=r"unsafe\.pt.*trusted=True"):
        read_checkpoint(path)
    _assert_same(read_checkpoint(path, trusted=True), sd)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_checkpoint(tmp_path / "nope.pt")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "m.npz").write_bytes(b"0")
    with pytest.raises(ValueError, match=r"m\.npz"):
        read_checkpoint(tmp_path / "m.npz")


def test_non_tensor_entry_named(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2), "step": 5}}, tmp_path / "m.pt")
    with pytest.raises(TypeError, match="'step'"):
        read_checkpoint(tmp_path / "m.pt")
