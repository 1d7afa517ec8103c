"""Reading checkpoint files into a flat state dict, unwrapped like the official loader (spec 4.2 step 1).

Pickled checkpoints are opened with `weights_only=True` unless the caller says the file is trusted: a pickle
can run arbitrary code, and the released VLMo / BEiT files only hold tensors and plain containers.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# The official loader looks for these wrappers in this order and takes the first one present.
WRAPPER_KEYS = ("state_dict", "module", "model")
DEEPSPEED_PREFIX = "module."


class UntrustedCheckpointError(RuntimeError):
    """A pickled checkpoint needs more than `weights_only` loading allows."""


def read_checkpoint(path: str | Path, trusted: bool = False) -> dict[str, Tensor]:
    """The state dict stored in a .safetensors / .pt / .pth / .ckpt / .bin file, on the CPU.

    Lightning ("state_dict"), DeepSpeed ("module", whose "module." key prefixes are stripped) and timm/BEiT
    ("model") wrappers are unwrapped as the official `load_pretrained_weight` does; a file without any of
    them is taken as the state dict itself.  `trusted=True` allows full unpickling (arbitrary code) and
    should only be passed for files from a trusted source.

    Example: sd = read_checkpoint("vlmo_base_patch16_224.pt")
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if suffix not in TORCH_SUFFIXES:
        raise ValueError(f"unsupported checkpoint file {path}: expected .safetensors or one of "
                         f"{', '.join(TORCH_SUFFIXES)}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        if trusted:
            raise
        raise UntrustedCheckpointError(
            f"{path} cannot be loaded with weights_only=True: it pickles more than tensors and plain "
            f"containers. Pass trusted=True only if you trust the source of this file, since unpickling it "
            f"can run arbitrary code. torch.load said: {err}") from err
    return unwrap_state_dict(ckpt, source=str(path))


def unwrap_state_dict(ckpt: object, source: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint object (official wrapper order, DeepSpeed prefix removed)."""
    if not isinstance(ckpt, Mapping):
        raise TypeError(f"{source}: expected a dict of tensors, got {type(ckpt).__name__}")
    sd: Mapping = ckpt
    for key in WRAPPER_KEYS:
        if key in ckpt:
            sd = ckpt[key]
            if not isinstance(sd, Mapping):
                raise TypeError(f"{source}: ckpt[{key!r}] is a {type(sd).__name__}, not a state dict")
            if key == "module":
                sd = {k.removeprefix(DEEPSPEED_PREFIX): v for k, v in sd.items()}
            break
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"{source}: state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v
    return out
