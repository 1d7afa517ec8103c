"""The training objectives on the packed core model, restructured for speed without changing the math.

Compared with the official computation (vlmo_fast.compat.objectives): padding is dropped; the ITM positives, its
two hard-negative sets and the MLM pass share ONE fused encoder call over 4B pairs; hard negatives are drawn for
the whole batch in one call; the MLM head runs only on the supervised tokens.  tests/train/test_step.py proves
the losses and gradients equal to the official-style computation for the same batch and negatives.

A batch may carry the layouts the data loader planned ("layouts", vlmo_fast/train/layouts.py) and the step its
draws made beforehand (StepDraws.passes): then no pass plans, draws or reads back anything itself, and the step
compiles as one graph (the trainer's compile=True).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmo_fast import objectives
from vlmo_fast.distributed import fetch_rows
from vlmo_fast.data.collate import text_lens
from vlmo_fast.data.mlm import IGNORE_INDEX
from vlmo_fast.model.inference import image_features, nlvr2_logits, supervised_rows, text_features, vqa_logits
from vlmo_fast.model.vlmo import VLMo, cls_rows
from .layouts import StepLayouts
from .step_draws import StepDraws

Losses = tuple[dict[str, Tensor], dict[str, Tensor]]  # (losses, metrics) of an objective


def _accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """The share of targets hit, over the targets that are not IGNORE_INDEX (a planned step's padding rows)."""
    if not target.numel():
        return logits.new_zeros(())
    valid = target != IGNORE_INDEX
    return ((logits.argmax(-1) == target) & valid).sum() / valid.sum().clamp(min=1)


def _planned(batch: dict) -> StepLayouts:
    """The layouts the data loader planned for the step (an empty plan when it planned none: each pass plans
    itself then)."""
    return batch.get("layouts") or StepLayouts()


def contrastive_features(model: VLMo, batch: dict, vl_branch: bool, draws: StepDraws) -> dict[str, Tensor]:
    """l2-normalised [CLS] projections of the text-only and image-only passes (and of their VL-FFN branch)."""
    ids, img, plan = batch["text_ids"], batch["image"][0], _planned(batch)
    text, image = plan.text, plan.image
    return {**text_features(model, ids, text_lens(batch), vl_branch, draws.dropout_generator, layout=text,
                            draws=text and draws.for_pass("text", model, text, vl_branch)),
            **image_features(model, img, vl_branch, draws.dropout_generator, layout=image,
                             draws=image and draws.for_pass("image", model, image, vl_branch))}


def itc_losses(model: VLMo, batch: dict, gather_grad: bool, draws: StepDraws) -> tuple[Tensor, Losses]:
    """ITC on the plain and the VL-FFN [CLS] features (averaged); also returns the image-to-text logits."""
    f = contrastive_features(model, batch, vl_branch=True, draws=draws)
    i2t, _ = objectives.contrastive_logits(f["image"], f["text"], model.logit_scale, True, gather_grad)
    vl_i2t, _ = objectives.contrastive_logits(f["image_vl"], f["text_vl"], model.logit_vl_scale, True, gather_grad)
    B = f["image"].shape[0]
    target = torch.arange(B, device=i2t.device)
    loss = 0.5 * (objectives.contrastive_loss(i2t) + objectives.contrastive_loss(vl_i2t))
    return i2t, ({"itc_loss": loss}, {"itc_i2t_accuracy": _accuracy(i2t[:B], target),
                                      "itc_t2i_accuracy": _accuracy(i2t.t()[:B], target)})


def _fused_inputs(batch: dict, tasks: set[str], negatives: tuple[Tensor, Tensor] | None):
    """The pairs of the one fused pass: [positives | (text, negative image) | (negative text, image) | MLM input],
    as enabled; returns (text_ids, text_lens, images, MLM labels or None)."""
    ids, lens, img = batch["text_ids"], text_lens(batch), batch["image"][0]
    texts, lengths, images = [], [], []
    if negatives is not None:
        neg_image, neg_text = negatives
        with torch.no_grad():  # only the chosen rows travel between ranks
            neg_ids, neg_lens = fetch_rows(ids, neg_text), fetch_rows(lens, neg_text)
            neg_img = fetch_rows(img, neg_image)
        texts, lengths, images = [ids, ids, neg_ids], [lens, lens, neg_lens], [img, neg_img, img]
    labels = None
    if "mlm" in tasks:
        texts.append(batch["text_ids_mlm"])
        lengths.append(lens)
        images.append(img)
        labels = torch.cat([torch.full_like(ids, -100)] * (len(texts) - 1) + [batch["text_labels_mlm"]])
    return torch.cat(texts), torch.cat(lengths), torch.cat(images), labels


def _fused_layout(model: VLMo, batch: dict, lens: Tensor, num_images: int, labels: Tensor | None):
    """The layout of the ITM + MLM pass and its MLM rows and targets: planned by the loader (the negatives'
    caption lengths set on the device), or planned here over the drawn negatives."""
    plan = _planned(batch)
    if plan.pretrain is not None:
        return plan.pretrain.with_text_keys(lens), plan.mlm_rows, plan.mlm_labels
    layout = model.plan(text_lens=lens, num_images=num_images)
    rows, target = supervised_rows(layout, labels) if labels is not None else (None, None)
    return layout, rows, target


def fused_losses(model: VLMo, batch: dict, tasks: set[str], i2t: Tensor | None, draws: StepDraws) -> Losses:
    """ITM with global hard negatives and MLM (x 0.25), sharing ONE fused encoder pass that computes only the
    rows read: the ITM [CLS] rows and the MLM supervised rows."""
    B = batch["text_ids"].shape[0]
    negatives = None
    if "itm" in tasks:
        if i2t is None:
            raise ValueError("ITM with hard negatives needs ITC (as in the official code)")
        negatives = draws.hard_negatives(i2t, B)
    ids, lens, images, labels = _fused_inputs(batch, tasks, negatives)
    layout, mlm_rows, target = _fused_layout(model, batch, lens, images.shape[0], labels)
    n_itm = 3 * B if negatives is not None else 0
    rows = [cls_rows(layout)[:n_itm]] + ([] if mlm_rows is None else [mlm_rows])
    feats = model.encode(layout, text_ids=ids, images=images, rows=torch.cat(rows),
                         draws=draws.for_pass("pretrain", model, layout)).feats
    losses, metrics = {}, {}
    if n_itm:
        logits = model.itm_score(model.pooler(feats[:n_itm]))
        itm_target = objectives.itm_labels(B, logits.device).long()
        losses["itm_loss"] = F.cross_entropy(logits, itm_target)
        metrics["itm_accuracy"] = _accuracy(logits, itm_target)
    if target is not None:
        logits = model.mlm_score(feats[n_itm:])
        losses["mlm_loss"] = 0.25 * objectives.mlm_loss(logits, target)
        metrics["mlm_accuracy"] = _accuracy(logits, target)
    return losses, metrics


def pretrain_losses(model: VLMo, batch: dict, tasks: set[str], gather_grad: bool = True,
                    draws: StepDraws | None = None) -> Losses:
    """Stage-3 pre-training: ITC (+ VL-FFN ITC), ITM with global hard negatives, MLM (x 0.25), as enabled."""
    draws = draws or StepDraws()
    losses, metrics, i2t = {}, {}, None
    if "itc" in tasks:
        i2t, (losses, metrics) = itc_losses(model, batch, gather_grad, draws)
    if tasks & {"itm", "mlm"}:
        fused, fused_metrics = fused_losses(model, batch, tasks, i2t, draws)
        losses.update(fused)
        metrics.update(fused_metrics)
    return losses, metrics


def textmlm_losses(model: VLMo, batch: dict, draws: StepDraws | None = None) -> Losses:
    """Stage 2: MLM on the text-only pass (no 0.25 factor)."""
    draws, plan = draws or StepDraws(), _planned(batch)
    if plan.text is not None:
        layout, rows, target = plan.text, plan.mlm_rows, plan.mlm_labels
    else:
        layout = model.plan(text_lens=text_lens(batch))
        rows, target = supervised_rows(layout, batch["text_labels_mlm"])
    feats = model.encode(layout, text_ids=batch["text_ids_mlm"], rows=rows,
                         draws=draws.for_pass("text", model, layout)).feats
    logits = model.mlm_score(feats)
    return {"mlm_loss": objectives.mlm_loss(logits, target)}, {"mlm_accuracy": _accuracy(logits, target)}


def _fused_plan(batch: dict, model: VLMo, draws: StepDraws) -> dict:
    """The planned layout and draws of a VQA / NLVR2 pass, as keywords (none when the step plans itself)."""
    layout = _planned(batch).fused
    return {} if layout is None else {"layout": layout, "draws": draws.for_pass("fused", model, layout)}


def vqa_losses(model: VLMo, batch: dict, draws: StepDraws | None = None) -> Losses:
    draws = draws or StepDraws()
    ids = batch["text_ids"]
    logits = vqa_logits(model, ids, text_lens(batch), batch["image"][0], draws.dropout_generator,
                        **_fused_plan(batch, model, draws))
    targets = batch.get("vqa_targets")
    if targets is None:
        targets = objectives.vqa_targets(batch["vqa_labels"], batch["vqa_scores"], logits.shape[1], logits.device)
    return ({"vqa_loss": objectives.vqa_loss(logits, targets)},
            {"vqa_score": objectives.vqa_score(logits, targets).mean()})


def nlvr2_losses(model: VLMo, batch: dict, draws: StepDraws | None = None) -> Losses:
    draws = draws or StepDraws()
    ids = batch["text_ids"]
    logits = nlvr2_logits(model, ids, text_lens(batch), batch["image_0"][0], batch["image_1"][0],
                          draws.dropout_generator, **_fused_plan(batch, model, draws))
    labels = batch.get("nlvr2_labels")
    if labels is None:
        labels = torch.as_tensor(batch["answers"], device=logits.device).long()
    return {"nlvr2_loss": F.cross_entropy(logits, labels)}, {"nlvr2_accuracy": _accuracy(logits, labels)}


def irtr_losses(model: VLMo, batch: dict, gather_grad: bool = True, draws: StepDraws | None = None) -> Losses:
    f = contrastive_features(model, batch, vl_branch=False, draws=draws or StepDraws())
    i2t, _ = objectives.contrastive_logits(f["image"], f["text"], model.logit_scale, True, gather_grad)
    B = f["image"].shape[0]
    target = torch.arange(B, device=i2t.device)
    return {"irtr_loss": objectives.contrastive_loss(i2t)}, {"irtr_i2t_accuracy": _accuracy(i2t[:B], target)}


def task_losses(model: VLMo, batch: dict, tasks: set[str], gather_grad: bool = True,
                draws: StepDraws | None = None) -> Losses:
    """Every enabled objective; the training loss is the plain sum of the returned losses (as official)."""
    draws = draws or StepDraws()
    parts = []
    if tasks & {"itc", "itm", "mlm"}:
        parts.append(pretrain_losses(model, batch, tasks, gather_grad, draws))
    if "textmlm" in tasks:
        parts.append(textmlm_losses(model, batch, draws))
    if "vqa" in tasks:
        parts.append(vqa_losses(model, batch, draws))
    if "nlvr2" in tasks:
        parts.append(nlvr2_losses(model, batch, draws))
    if "irtr" in tasks:
        parts.append(irtr_losses(model, batch, gather_grad, draws))
    losses, metrics = {}, {}
    for part_losses, part_metrics in parts:
        losses.update(part_losses)
        metrics.update(part_metrics)
    return losses, metrics
