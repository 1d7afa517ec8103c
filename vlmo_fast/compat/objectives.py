"""The official objectives (`vlmo.modules.objectives.compute_*`) with their signatures, batch keys and result keys,
on the drop-in VLMo.  They run without torch.distributed (world size 1), with aggregate=False, and on the CPU."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmo_fast import objectives as O
from vlmo_fast.distributed import gather_local_first


def compute_mlm(model, batch: dict) -> dict:
    infer = model.infer(batch, mask_text=True, mask_image=False)
    logits = model.mlm_score(infer["text_feats"])
    labels = infer["text_labels"]
    return {"mlm_loss": O.mlm_loss(logits, labels) * 0.25, "mlm_logits": logits, "mlm_labels": labels,
            "mlm_ids": infer["text_ids"]}


def compute_textonly_mlm(model, batch: dict) -> dict:
    infer = model.infer_text_mlm(batch, mask_text=True)
    logits = model.mlm_score(infer["text_feats"])
    labels = infer["text_labels"]
    return {"mlm_loss": O.mlm_loss(logits, labels), "mlm_logits": logits, "mlm_labels": labels,
            "mlm_ids": infer["text_ids"]}


def _contrastive(model, batch: dict, aggregate: bool, finetune: bool) -> tuple[dict, dict, Tensor]:
    if finetune:
        img, txt = model.infer_image_ft(batch, mask_image=False), model.infer_text_ft(batch, mask_text=False)
    else:
        img, txt = model.infer_image(batch, mask_image=False), model.infer_text(batch, mask_text=False)
    # Official: other ranks' features are constants (gathered without gradient).
    i2t, t2i = O.contrastive_logits(img["cls_feats"], txt["cls_feats"], model.logit_scale, aggregate, False)
    return img, txt, i2t


def compute_itc(model, batch: dict, aggregate: bool = True) -> dict:
    img, txt, i2t = _contrastive(model, batch, aggregate, finetune=False)
    vl_i2t, _ = O.contrastive_logits(img["cls_vlffn_feats"], txt["cls_vlffn_feats"], model.logit_vl_scale,
                                     aggregate, False)
    loss = 0.5 * (O.contrastive_loss(i2t) + O.contrastive_loss(vl_i2t))
    return {"itc_loss": loss, "itc_i2t_logits": i2t, "itc_t2i_logits": i2t.t(),
            "itc_labels": torch.arange(i2t.shape[0], device=i2t.device),
            "itc_logit_scale": model.logit_scale.exp(), "itc_logit_vl_scale": model.logit_vl_scale.exp(),
            "itc_vl_i2t_logits": vl_i2t, "itc_vl_t2i_logits": vl_i2t.t()}


def compute_irtr(model, batch: dict, aggregate: bool = True) -> dict:
    _, _, i2t = _contrastive(model, batch, aggregate, finetune=True)
    return {"irtr_loss": O.contrastive_loss(i2t), "irtr_i2t_logits": i2t, "irtr_t2i_logits": i2t.t(),
            "irtr_labels": torch.arange(i2t.shape[0], device=i2t.device), "irtr_logit_scale": model.logit_scale.exp()}


def compute_itm_hardneg(model, batch: dict, sim_i2t: Tensor, sim_t2i: Tensor, neg_image_idx: Tensor | None = None,
                        neg_text_idx: Tensor | None = None) -> dict:
    """ITM over the positives, (text k, hard negative image) and (image k, hard negative text).  The two index
    tensors (into the gathered batch) replace the sampling when given."""
    B = batch["text_ids"].shape[0]
    pos = model.infer(batch, mask_text=False, mask_image=False)
    with torch.no_grad():
        all_ids = gather_local_first(pos["text_ids"], False)
        all_masks = gather_local_first(pos["text_masks"], False)
        all_images = gather_local_first(pos["image"], False)
    if neg_image_idx is None or neg_text_idx is None:
        drawn_image, drawn_text = O.hard_negative_indices(sim_i2t, sim_t2i, B)
        neg_image_idx = drawn_image if neg_image_idx is None else neg_image_idx
        neg_text_idx = drawn_text if neg_text_idx is None else neg_text_idx
    neg_image_idx, neg_text_idx = neg_image_idx.to(all_images.device), neg_text_idx.to(all_ids.device)
    neg_img = model.infer({"image": [all_images[neg_image_idx]], "text_ids": batch["text_ids"],
                           "text_labels": batch.get("text_labels"), "text_masks": batch["text_masks"]})
    neg_txt = model.infer({"image": batch["image"], "text_ids": all_ids[neg_text_idx],
                           "text_labels": batch.get("text_labels"), "text_masks": all_masks[neg_text_idx]})
    logits = model.itm_score(torch.cat([pos["cls_feats"], neg_img["cls_feats"], neg_txt["cls_feats"]]))
    labels = O.itm_labels(B, logits.device)
    return {"itm_loss": F.cross_entropy(logits, labels.long()), "itm_logits": logits, "itm_labels": labels}


def compute_vqa(model, batch: dict) -> dict:
    infer = model.infer(batch, mask_text=False, mask_image=False)
    logits = model.vqa_classifier(infer["cls_feats"])
    targets = O.vqa_targets(batch["vqa_labels"], batch["vqa_scores"], logits.shape[1], logits.device)
    return {"vqa_loss": O.vqa_loss(logits, targets), "vqa_logits": logits, "vqa_targets": targets,
            "vqa_labels": batch["vqa_labels"], "vqa_scores": batch["vqa_scores"]}


def compute_nlvr2(model, batch: dict) -> dict:
    """Pair method: two fused passes (image_0 with token type 1, image_1 with token type 2).  In eval mode the
    result also splits the accuracy by table_name (dev / test) as the official validation does."""
    f1 = model.infer(batch, mask_text=False, mask_image=False, image_token_type_idx=1)
    f2 = model.infer(batch, mask_text=False, mask_image=False, image_token_type_idx=2)
    logits = model.nlvr2_classifier(torch.cat([f1["cls_feats"], f2["cls_feats"]], dim=-1))
    labels = torch.as_tensor(batch["answers"], device=logits.device).long()
    ret = {"nlvr2_loss": F.cross_entropy(logits, labels), "nlvr2_logits": logits, "nlvr2_labels": labels}
    if not model.training and "table_name" in batch:
        correct = (logits.argmax(-1) == labels).float()
        for split in ("dev", "test"):
            rows = [i for i, n in enumerate(batch["table_name"]) if split in n]
            if rows:
                idx = torch.tensor(rows, device=logits.device)
                ret[f"nlvr2_{split}_loss"] = F.cross_entropy(logits[idx], labels[idx])
                ret[f"nlvr2_{split}_accuracy"] = correct[idx].mean()
    return ret


def run_tasks(model, batch: dict, tasks: list[str]) -> dict:
    """The official forward over the enabled tasks, in the official order."""
    ret: dict = {}
    if "mlm" in tasks:
        ret.update(compute_mlm(model, batch))
    if "textmlm" in tasks:
        ret.update(compute_textonly_mlm(model, batch))
    if "itc" in tasks:
        ret.update(compute_itc(model, batch))
    if "irtr" in tasks:
        ret.update(compute_irtr(model, batch))
    if "itm" in tasks:
        ret.update(compute_itm_hardneg(model, batch, ret["itc_i2t_logits"], ret["itc_t2i_logits"]))
    if "vqa" in tasks:
        ret.update(compute_vqa(model, batch))
    if "nlvr2" in tasks:
        ret.update(compute_nlvr2(model, batch))
    return ret
