"""Access to the golden tensors of the official code (../shared/fixtures/official, FIXTURES.md there)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent


def fixtures_dir() -> Path | None:
    """VLMO_FAST_FIXTURES, else ../shared/fixtures/official from the repo root; None if neither exists."""
    env = os.environ.get("VLMO_FAST_FIXTURES")
    for cand in ([Path(env)] if env else []) + [REPO_ROOT.parent / "shared" / "fixtures" / "official"]:
        if (cand / "tiny.json").is_file():
            return cand
    return None


@dataclass
class FixtureSet:
    name: str
    meta: dict
    tensors: dict[str, torch.Tensor]

    @classmethod
    def load(cls, directory: Path, name: str) -> "FixtureSet":
        meta = json.loads((Path(directory) / f"{name}.json").read_text())
        tensors: dict[str, torch.Tensor] = {}
        for f in sorted(set(meta["file_index"].values())):
            tensors.update(load_file(str(Path(directory) / f)))
        return cls(name, meta, tensors)

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors whose key starts with `prefix.`, with the prefix removed (e.g. group("grad"))."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The official state dict (the params group has no prefix)."""
        skip = ("in.", "out.", "aux.", "gradw.", "grad.", "src64.")
        return {k: v for k, v in self.tensors.items() if not k.startswith(skip)}


def assert_close_out(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Outputs against the official fixtures: |a - e| <= 2e-5 + 1e-4 * max|e| (design.md)."""
    tol = 2e-5 + 1e-4 * expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"


def assert_close_grad(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Gradients against the official fixtures: |a - e| <= 1e-5 + 1e-3 * max|e| per tensor (design.md)."""
    tol = 1e-5 + 1e-3 * expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"
