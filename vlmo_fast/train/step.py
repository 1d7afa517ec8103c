"""The training objectives on the packed core model, restructured for speed without changing the math.

Compared with the official computation (vlmo_fast.compat.objectives): padding is dropped; the ITM positives, its
two hard-negative sets and the MLM pass share ONE fused encoder call over 4B pairs; hard negatives are drawn for
the whole batch in one call; the MLM head runs only on the supervised tokens.  tests/train/test_step.py proves
the losses and gradients equal to the official-style computation for the same batch and negatives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmo_fast import objectives as O
from vlmo_fast.distributed import fetch_rows
from vlmo_fast.model.vlmo import VLMo, first_row_index
from vlmo_fast.ops.layout import PackedLayout
from vlmo_fast.ops.packing import pack_text


def text_lens(batch: dict) -> Tensor:
    """Real caption lengths: the collate's `text_lens`, else the sum of the (prefix) masks."""
    lens = batch.get("text_lens")
    return (batch["text_masks"].sum(1) if lens is None else lens).to(torch.int32)


def _l2(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def supervised_rows(layout: PackedLayout, labels_padded: Tensor) -> tuple[Tensor, Tensor]:
    """The packed text rows with an MLM label (label != -100) and those labels."""
    labels = pack_text(labels_padded, layout)  # (Tt,)
    rows = (labels != -100).nonzero().squeeze(1)
    return rows, labels.index_select(0, rows)


def _mlm(model: VLMo, feats: Tensor, rows: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """MLM loss over the supervised text rows only (supervised_rows); also returns their logits and labels."""
    logits = model.mlm_score(feats.index_select(0, rows))
    return O.mlm_loss(logits, target), logits, target


def _accuracy(logits: Tensor, target: Tensor) -> Tensor:
    return (logits.argmax(-1) == target).float().mean() if target.numel() else logits.new_zeros(())


def contrastive_features(model: VLMo, batch: dict, vl_branch: bool) -> dict[str, Tensor]:
    """L2-normalised [CLS] projections of the text-only and image-only passes (and of their VL-FFN branch)."""
    ids, lens, img = batch["text_ids"], text_lens(batch), batch["image"][0]
    text = model.encode(text_ids=ids, text_lens=lens, vl_branch=vl_branch, output_rows=first_row_index)
    image = model.encode(images=img, vl_branch=vl_branch, output_rows=first_row_index)
    out = {"text": _l2(model.itc_text_proj(text.first_rows(text.feats))),
           "image": _l2(model.itc_image_proj(image.first_rows(image.feats)))}
    if vl_branch:
        out["text_vl"] = _l2(model.itc_vl_text_proj(text.first_rows(text.vl_feats)))
        out["image_vl"] = _l2(model.itc_vl_image_proj(image.first_rows(image.vl_feats)))
    return out


def pretrain_losses(model: VLMo, batch: dict, tasks: set[str], gather_grad: bool = True,
                    negatives: tuple[Tensor, Tensor] | None = None,
                    generator: torch.Generator | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Stage-3 pre-training: ITC (+ VL-FFN ITC), ITM with global hard negatives, MLM (x 0.25), as enabled.

    negatives=(neg_image_idx, neg_text_idx) replaces the sampling (indices into the gathered batch).
    Returns (losses, metrics)."""
    ids, lens, img = batch["text_ids"], text_lens(batch), batch["image"][0]
    B = ids.shape[0]
    losses, metrics = {}, {}
    i2t = None
    if "itc" in tasks:
        f = contrastive_features(model, batch, vl_branch=True)
        i2t, _ = O.contrastive_logits(f["image"], f["text"], model.logit_scale, True, gather_grad)
        vl_i2t, _ = O.contrastive_logits(f["image_vl"], f["text_vl"], model.logit_vl_scale, True, gather_grad)
        losses["itc_loss"] = 0.5 * (O.contrastive_loss(i2t) + O.contrastive_loss(vl_i2t))
        target = torch.arange(B, device=i2t.device)
        metrics["itc_i2t_accuracy"] = _accuracy(i2t[:B], target)
        metrics["itc_t2i_accuracy"] = _accuracy(i2t.t()[:B], target)

    # One fused pass over [positives | (text, negative image) | (negative text, image) | MLM input].
    texts, text_len, images = [], [], []
    if "itm" in tasks:
        if negatives is None:
            if i2t is None:
                raise ValueError("ITM with hard negatives needs ITC (as in the official code)")
            negatives = O.hard_negative_indices(i2t, i2t.t(), B, generator)
        neg_image, neg_text = negatives
        with torch.no_grad():  # only the chosen rows travel between ranks
            neg_ids, neg_lens = fetch_rows(ids, neg_text), fetch_rows(lens, neg_text)
            neg_img = fetch_rows(img, neg_image)
        texts += [ids, ids, neg_ids]
        text_len += [lens, lens, neg_lens]
        images += [img, neg_img, img]
    if "mlm" in tasks:
        texts.append(batch["text_ids_mlm"])
        text_len.append(lens)
        images.append(img)
    if texts:
        n_itm = 3 * B if "itm" in tasks else 0
        labels_all = torch.cat([torch.full_like(ids, -100)] * (len(texts) - 1) + [batch["text_labels_mlm"]]) \
            if "mlm" in tasks else None

        supervised: list[tuple[Tensor, Tensor]] = []  # found once, on the pass's layout, for the MLM loss too

        def read_rows(layout: PackedLayout) -> Tensor:  # the ITM [CLS] rows and the MLM supervised rows
            rows = [first_row_index(layout)[:n_itm]]
            if labels_all is not None:
                supervised.append(supervised_rows(layout, labels_all))
                rows.append(supervised[0][0])
            return torch.cat(rows)

        enc = model.encode(text_ids=torch.cat(texts), text_lens=torch.cat(text_len), images=torch.cat(images),
                           output_rows=read_rows)
        if "itm" in tasks:
            logits = model.itm_score(model.pooler(enc.first_rows(enc.feats)[: 3 * B]))
            labels = O.itm_labels(B, logits.device).long()
            losses["itm_loss"] = F.cross_entropy(logits, labels)
            metrics["itm_accuracy"] = _accuracy(logits, labels)
        if "mlm" in tasks:
            loss, logits, target = _mlm(model, enc.feats, *supervised[0])
            losses["mlm_loss"] = 0.25 * loss
            metrics["mlm_accuracy"] = _accuracy(logits, target)
    return losses, metrics


def textmlm_losses(model: VLMo, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Stage 2: MLM on the text-only pass (no 0.25 factor)."""
    supervised: list[tuple[Tensor, Tensor]] = []  # found once, on the pass's layout, for the loss too

    def read_rows(layout: PackedLayout) -> Tensor:
        supervised.append(supervised_rows(layout, batch["text_labels_mlm"]))
        return supervised[0][0]

    enc = model.encode(text_ids=batch["text_ids_mlm"], text_lens=text_lens(batch), output_rows=read_rows)
    loss, logits, target = _mlm(model, enc.feats, *supervised[0])
    return {"mlm_loss": loss}, {"mlm_accuracy": _accuracy(logits, target)}


def vqa_logits(model: VLMo, batch: dict) -> Tensor:
    enc = model.encode(text_ids=batch["text_ids"], text_lens=text_lens(batch), images=batch["image"][0],
                       output_rows=first_row_index)
    return model.vqa_classifier(model.pooler(enc.first_rows(enc.feats)))


def vqa_losses(model: VLMo, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    logits = vqa_logits(model, batch)
    targets = batch.get("vqa_targets")
    if targets is None:
        targets = O.vqa_targets(batch["vqa_labels"], batch["vqa_scores"], logits.shape[1], logits.device)
    return {"vqa_loss": O.vqa_loss(logits, targets)}, {"vqa_score": O.vqa_score(logits, targets).mean()}


def nlvr2_logits(model: VLMo, batch: dict) -> Tensor:
    """Both images of every pair in one fused pass (token types 1 and 2), pooled features concatenated."""
    ids, lens = batch["text_ids"], text_lens(batch)
    B = ids.shape[0]
    types = torch.cat([torch.ones(B, dtype=torch.long), torch.full((B,), 2, dtype=torch.long)])
    enc = model.encode(text_ids=torch.cat([ids, ids]), text_lens=torch.cat([lens, lens]),
                       images=torch.cat([batch["image_0"][0], batch["image_1"][0]]), image_token_type=types,
                       output_rows=first_row_index)
    pooled = model.pooler(enc.first_rows(enc.feats))
    return model.nlvr2_classifier(torch.cat([pooled[:B], pooled[B:]], dim=-1))


def nlvr2_losses(model: VLMo, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    logits = nlvr2_logits(model, batch)
    labels = torch.as_tensor(batch["answers"], device=logits.device).long()
    return {"nlvr2_loss": F.cross_entropy(logits, labels)}, {"nlvr2_accuracy": _accuracy(logits, labels)}


def irtr_losses(model: VLMo, batch: dict, gather_grad: bool = True) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    f = contrastive_features(model, batch, vl_branch=False)
    i2t, _ = O.contrastive_logits(f["image"], f["text"], model.logit_scale, True, gather_grad)
    B = f["image"].shape[0]
    return {"irtr_loss": O.contrastive_loss(i2t)}, {"irtr_i2t_accuracy": _accuracy(i2t[:B], torch.arange(B, device=i2t.device))}


def task_losses(model: VLMo, batch: dict, tasks: set[str], gather_grad: bool = True,
                generator: torch.Generator | None = None,
                negatives: tuple[Tensor, Tensor] | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Every enabled objective; the training loss is the plain sum of the returned losses (as official)."""
    losses, metrics = {}, {}
    parts = []
    if tasks & {"itc", "itm", "mlm"}:
        parts.append(pretrain_losses(model, batch, tasks, gather_grad, negatives, generator))
    if "textmlm" in tasks:
        parts.append(textmlm_losses(model, batch))
    if "vqa" in tasks:
        parts.append(vqa_losses(model, batch))
    if "nlvr2" in tasks:
        parts.append(nlvr2_losses(model, batch))
    if "irtr" in tasks:
        parts.append(irtr_losses(model, batch, gather_grad))
    for l, m in parts:
        losses.update(l)
        metrics.update(m)
    return losses, metrics
