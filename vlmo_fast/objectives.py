"""The losses of VLMo (spec section 3) as small functions on features, shared by the trainer and the drop-in
surface (vlmo_fast.compat.objectives)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmo_fast.distributed import gather_local_first


def contrastive_logits(image_feats: Tensor, text_feats: Tensor, logit_scale: Tensor, gather: bool = True,
                       gather_grad: bool = True) -> tuple[Tensor, Tensor]:
    """(i2t, t2i) logits exp(logit_scale) * img @ txt^T over the global batch (local rows first)."""
    if gather:
        image_feats = gather_local_first(image_feats, gather_grad)
        text_feats = gather_local_first(text_feats, gather_grad)
    # fp32 under autocast too: a bf16 product of unit vectors scaled by up to 100 would round the logits coarsely
    with torch.autocast(image_feats.device.type, enabled=False):
        i2t = logit_scale.float().exp() * image_feats.float() @ text_feats.float().t()
    return i2t, i2t.t()


def contrastive_loss(i2t: Tensor) -> Tensor:
    """Symmetric InfoNCE with targets arange: (CE(i2t) + CE(t2i)) / 2."""
    target = torch.arange(i2t.shape[0], device=i2t.device)
    return (F.cross_entropy(i2t.float(), target) + F.cross_entropy(i2t.t().float(), target)) / 2


def hard_negative_indices(sim_i2t: Tensor, sim_t2i: Tensor, batch_size: int,
                          generator: torch.Generator | None = None,
                          uniforms: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Hard negatives as the official ITM draws them, in one call per direction: for each local text k an image
    index ~ softmax(sim_t2i[k]) and for each local image k a text index ~ softmax(sim_i2t[k]), with the own
    positive (the diagonal) excluded.  Returns (neg_image_idx, neg_text_idx), each (batch_size,) into the
    gathered batch.

    With `uniforms` (2, batch_size) in [0, 1) the draws are made from them by inverting each row's cumulative
    weights (same distribution, other samples than torch.multinomial): a compiled step takes its randomness as
    tensors, drawn outside it."""
    with torch.no_grad():
        w_i2t = _sampling_weights(sim_i2t[:batch_size])
        w_t2i = _sampling_weights(sim_t2i[:batch_size])
        if uniforms is not None:
            return _inverse_cdf(w_t2i, uniforms[0]), _inverse_cdf(w_i2t, uniforms[1])
        neg_image = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1)
        neg_text = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)
    return neg_image, neg_text


def _inverse_cdf(weights: Tensor, u: Tensor) -> Tensor:
    """Per row the first index whose cumulative weight exceeds u * total: index i with probability w_i / total;
    a zero weight (the diagonal) is never chosen, as its cumulative weight equals its predecessor's."""
    cdf = weights.double().cumsum(1)
    target = u.double()[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=weights.shape[1] - 1)


def _sampling_weights(sim: Tensor) -> Tensor:
    """softmax over the candidates with the diagonal (own positive) zeroed; a row that is not finite (a diverged
    step, whose loss the trainer then skips) falls back to uniform weights so sampling itself cannot fail."""
    w = F.softmax(sim.float(), dim=1).fill_diagonal_(0)
    bad = ~torch.isfinite(w).all(1) | (w.sum(1) <= 0)
    uniform = torch.ones_like(w).fill_diagonal_(0)
    return torch.where(bad[:, None], uniform, w)


def itm_labels(batch_size: int, device: torch.device) -> Tensor:
    """[1]*B positives, then B (text, negative image) and B (image, negative text) pairs (as float, official)."""
    return torch.cat([torch.ones(batch_size, device=device), torch.zeros(2 * batch_size, device=device)])


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross entropy over supervised positions (label != -100)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


def vqa_targets(labels: list, scores: list, num_labels: int, device: torch.device | None = None) -> Tensor:
    """Dense (B, num_labels) VQA target: target[i, label] = score."""
    rows = [i for i, ls in enumerate(labels) for _ in ls]
    cols = [c for ls in labels for c in ls]
    vals = [float(s) for ss in scores for s in ss]
    target = torch.zeros(len(labels), num_labels, device=device)
    if cols:
        bad = [c for c in cols if not 0 <= c < num_labels]
        if bad:
            raise ValueError(f"VQA labels {bad} outside [0, {num_labels})")
        target[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = torch.tensor(vals, device=device)
    return target


def vqa_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """BCE-with-logits (mean) x num_labels: a sum over labels, a mean over the batch."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets) * targets.shape[1]


def vqa_score(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-question VQA score: the target score of the arg-max answer."""
    return targets.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)
