"""The random decisions of a training pass, drawn before it runs and handed to it.

Stochastic depth (timm's DropPath: one keep decision per pair and branch) and the text embeddings' dropout
(both at drop_path_rate, as officially) are drawn here, in the order the official modules draw them while they
run: the text dropout mask, then layer by layer the attention branch and each FFN row group, then the VL-FFN
branch of a unimodal pass.  Drawn from the global generator this reproduces an eager run's decisions exactly; the
pass itself reads only the tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PassDraws:
    drop_path: Tensor            # (2, depth, 3, P) uniforms: [main path, VL-FFN branch] x layer x [attention,
                                 # FFN row group 0, FFN row group 1] x pair (rows a layer does not draw stay 0)
    text_keep: Tensor | None     # (Tt, D) 0/1 keep mask of the text embeddings' dropout (None without text)


def draw_pass(layer_rates: list[float], groups_per_layer: list[int], vl_start: int, vl_branch: bool,
              num_pairs: int, num_text_rows: int, dim: int, text_rate: float, device: torch.device,
              generator: torch.Generator | None = None) -> PassDraws:
    """layer_rates: each layer's drop-path rate (layers at 0 draw nothing); groups_per_layer: FFN row groups of
    each layer on the main path; vl_branch: the pass also runs the VL-FFN branch from vl_start (one group)."""
    depth = len(layer_rates)
    drop_path = torch.zeros(2, depth, 3, num_pairs, device=device)
    text_keep = None
    if num_text_rows:
        text_keep = torch.empty(num_text_rows, dim, device=device).bernoulli_(1.0 - text_rate, generator=generator)
    branches = [(0, range(depth))] + ([(1, range(vl_start, depth))] if vl_branch else [])
    for branch, layers in branches:
        for i in layers:
            if layer_rates[i] == 0.0:
                continue
            for row in range(1 + (groups_per_layer[i] if branch == 0 else 1)):
                drop_path[branch, i, row] = torch.rand(num_pairs, generator=generator, device=device)
    return PassDraws(drop_path, text_keep)
