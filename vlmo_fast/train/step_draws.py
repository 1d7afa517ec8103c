"""The randomness of one training step, handed to it.

Eagerly a step can draw while it runs (from generators, in the official order; model/draws.py).  A compiled step
takes its randomness as tensors drawn before it, by `draw_step`: torch.compile(fullgraph=True) takes no
torch.Generator, and inductor's random numbers are not eager's.  So a compiled and an eager step can be run on
the same draws, and a resumed run draws on exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vlmo_fast import objectives
from vlmo_fast.model.draws import PassDraws
from vlmo_fast.model.vlmo import VLMo
from vlmo_fast.ops.layout import PackedLayout
from .layouts import StepLayouts


@dataclass
class StepDraws:
    """Hard negatives are sampled with `generator`, or from `negative_uniforms` (2, B), or come pre-drawn as
    (neg_image_idx, neg_text_idx) indices into the gathered batch (`negatives`).  Stochastic depth and the text
    dropout are decided with `dropout_generator` (VLMo.pass_draws) unless `passes` holds them, drawn already, by
    pass name (StepLayouts' fields).  None means the global generator (whose state the trainer's checkpoints
    carry, so a resumed run draws on exactly)."""

    generator: torch.Generator | None = None
    negatives: tuple[Tensor, Tensor] | None = None
    dropout_generator: torch.Generator | None = None
    passes: dict[str, PassDraws | None] | None = None
    negative_uniforms: Tensor | None = None

    def hard_negatives(self, i2t: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        if self.negatives is not None:
            return self.negatives
        return objectives.hard_negative_indices(i2t, i2t.t(), batch_size, self.generator, self.negative_uniforms)

    def for_pass(self, name: str, model: VLMo, layout: PackedLayout, vl_branch: bool = False) -> PassDraws | None:
        """The draws of pass `name` over `layout`: pre-drawn, or drawn now."""
        if self.passes is not None:
            return self.passes[name]
        return model.pass_draws(layout, vl_branch, self.dropout_generator)


def draw_step(model: VLMo, layouts: StepLayouts, tasks: set[str], generator: torch.Generator | None = None,
              dropout_generator: torch.Generator | None = None) -> StepDraws:
    """Every random decision of a step over planned `layouts`, drawn now (on the layouts' device): each pass's
    stochastic depth and text dropout from dropout_generator, the hard negatives' uniforms from generator."""
    vl_branch = {"text": "itc" in tasks, "image": "itc" in tasks}
    passes = {name: model.pass_draws(getattr(layouts, name), vl_branch.get(name, False), dropout_generator)
              for name in ("text", "image", "pretrain", "fused") if getattr(layouts, name) is not None}
    uniforms = None
    if "itm" in tasks:
        B = layouts.pretrain.num_pairs // (4 if "mlm" in tasks else 3)
        uniforms = torch.rand(2, B, generator=generator, device=layouts.pretrain.device)
    return StepDraws(passes=passes, negative_uniforms=uniforms)
