"""The model's task outputs on padded batches: ITC features, ITM, VQA and NLVR2 logits.

Each plans its pass, reads only the [CLS] rows and applies the head; the training losses (train/step.py),
evaluation (train/evaluate.py) and prediction (predict.py) all stand on these.  In training, `generator` draws the
pass's random decisions (VLMo.pass_draws; the global generator when None).  A training step planned by the data
loader hands in its `layout` and its pre-drawn `draws` (vlmo_fast/train/layouts.py, step_draws.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

from vlmo_fast.ops.layout import PackedLayout
from vlmo_fast.ops.packing import pack_text
from .draws import PassDraws
from .heads import l2_normalize
from .vlmo import VLMo, cls_rows


def supervised_rows(layout: PackedLayout, labels_padded: Tensor) -> tuple[Tensor, Tensor]:
    """The packed text rows with an MLM label (label != -100) and those labels."""
    labels = pack_text(labels_padded, layout)  # (Tt,)
    rows = (labels != -100).nonzero().squeeze(1)
    return rows, labels.index_select(0, rows)


def _unimodal_features(model: VLMo, layout: PackedLayout, inputs: dict[str, Tensor], modality: str,
                       vl_branch: bool, generator: torch.Generator | None,
                       draws: PassDraws | None) -> dict[str, Tensor]:
    if draws is None:
        draws = model.pass_draws(layout, vl_branch, generator)
    enc = model.encode(layout, **inputs, rows=cls_rows(layout), vl_branch=vl_branch, draws=draws)
    out = {modality: l2_normalize(getattr(model, f"itc_{modality}_proj")(enc.feats))}
    if vl_branch:
        out[f"{modality}_vl"] = l2_normalize(getattr(model, f"itc_vl_{modality}_proj")(enc.vl_feats))
    return out


def text_features(model: VLMo, text_ids: Tensor, text_lens: Tensor, vl_branch: bool = False,
                  generator: torch.Generator | None = None, *, layout: PackedLayout | None = None,
                  draws: PassDraws | None = None) -> dict[str, Tensor]:
    """l2-normalised ITC projections of the text-only pass's [CLS]: {"text"} (and {"text_vl"} of the VL-FFN
    branch; the official infer_text / infer_text_ft)."""
    layout = layout or model.plan(text_lens=text_lens)
    return _unimodal_features(model, layout, {"text_ids": text_ids}, "text", vl_branch, generator, draws)


def image_features(model: VLMo, images: Tensor, vl_branch: bool = False,
                   generator: torch.Generator | None = None, *, layout: PackedLayout | None = None,
                   draws: PassDraws | None = None) -> dict[str, Tensor]:
    """l2-normalised ITC projections of the image-only pass's [CLS]: {"image"} (and {"image_vl"})."""
    layout = layout or model.plan(num_images=images.shape[0])
    return _unimodal_features(model, layout, {"images": images}, "image", vl_branch, generator, draws)


def fused_cls(model: VLMo, text_ids: Tensor, text_lens: Tensor, images: Tensor,
              image_token_type: int | Tensor = 1, generator: torch.Generator | None = None, *,
              layout: PackedLayout | None = None, draws: PassDraws | None = None) -> Tensor:
    """(B, D) pooled [CLS] of the fused pass over (text, image) pairs."""
    layout = layout or model.plan(text_lens=text_lens, num_images=images.shape[0])
    if draws is None:
        draws = model.pass_draws(layout, generator=generator)
    enc = model.encode(layout, text_ids=text_ids, images=images, image_token_type=image_token_type,
                       rows=cls_rows(layout), draws=draws)
    return model.pooler(enc.feats)


def itm_logits(model: VLMo, text_ids: Tensor, text_lens: Tensor, images: Tensor) -> Tensor:
    """(B, 2) image-text matching logits (index 1: the pair matches)."""
    return model.itm_score(fused_cls(model, text_ids, text_lens, images))


def vqa_logits(model: VLMo, text_ids: Tensor, text_lens: Tensor, images: Tensor,
               generator: torch.Generator | None = None, **planned) -> Tensor:
    """(B, answers) VQA logits of (question, image) pairs (planned: fused_cls's layout and draws)."""
    return model.vqa_classifier(fused_cls(model, text_ids, text_lens, images, generator=generator, **planned))


def nlvr2_logits(model: VLMo, text_ids: Tensor, text_lens: Tensor, image_0: Tensor, image_1: Tensor,
                 generator: torch.Generator | None = None, **planned) -> Tensor:
    """(B, 2) NLVR2 logits: both images of every pair in one fused pass (token types 1 and 2), pooled features
    concatenated."""
    B = text_ids.shape[0]
    types = torch.arange(2 * B, device=text_ids.device) // B + 1
    pooled = fused_cls(model, torch.cat([text_ids, text_ids]), torch.cat([text_lens, text_lens]),
                       torch.cat([image_0, image_1]), types, generator, **planned)
    return model.nlvr2_classifier(torch.cat([pooled[:B], pooled[B:]], dim=-1))
