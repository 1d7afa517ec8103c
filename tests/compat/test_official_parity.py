"""Parity of the drop-in surface with the official code: every output, hidden state, loss and gradient of the
official fixtures (FIXTURES.md), at the tolerances of design.md, through vlmo_fast.compat."""
from __future__ import annotations

import torch

from tests.fixtures import FixtureSet, assert_close_grad, assert_close_out
from vlmo_fast.compat import VLMo
from vlmo_fast.compat import objectives as obj


def build(fx: FixtureSet) -> VLMo:
    model = VLMo(fx.meta["official_config"], arch=fx.meta["arch"])
    model.load_state_dict(fx.params, strict=True)
    return model.eval()


def official_batch(fx: FixtureSet) -> dict:
    t = fx.tensors
    inputs = fx.meta["inputs"]
    return {
        "text_ids": t["in.text_ids"], "text_masks": t["in.text_masks"],
        "text_labels": torch.full_like(t["in.text_ids"], -100),
        "text_ids_mlm": t["in.text_ids_mlm"], "text_labels_mlm": t["in.text_labels_mlm"],
        "image": [t["in.image"]], "image_0": [t["in.image"]], "image_1": [t["in.image2"]],
        "vqa_labels": inputs["vqa_labels"], "vqa_scores": inputs["vqa_scores"],
        "answers": [int(a) for a in inputs["nlvr2_answers"]],
    }


def all_outputs(model: VLMo, fx: FixtureSet, hidden: bool = False) -> dict[str, torch.Tensor]:
    """Every fixture output name (without 'out.') computed through the compat surface."""
    batch = official_batch(fx)
    out: dict[str, torch.Tensor] = {}
    vl = model.infer({k: v for k, v in batch.items() if k not in ("image_0", "image_1")}, return_hidden=hidden)
    text = model.infer_text(batch, return_hidden=hidden)
    image = model.infer_image({"image": batch["image"]}, return_hidden=hidden)
    for k in ("text_feats", "image_feats", "cls_feats", "raw_cls_feats"):
        out[f"vl.{k}"] = vl[k]
    for k in ("text_feats", "cls_feats", "cls_vlffn_feats", "raw_cls_feats"):
        out[f"text.{k}"] = text[k]
    for k in ("image_feats", "cls_feats", "cls_vlffn_feats", "raw_cls_feats"):
        out[f"image.{k}"] = image[k]
    if hidden:
        s = model.cfg.vl_start
        for name, r in (("vl", vl), ("text", text), ("image", image)):
            out.update({f"{name}.hidden.{i}": h for i, h in enumerate(r["hidden"])})
            if name != "vl":
                out.update({f"{name}.vlffn_hidden.{s + i}": h for i, h in enumerate(r["vlffn_hidden"])})
    b3 = {k: v for k, v in batch.items() if k not in ("image_0", "image_1")}
    itc = obj.compute_itc(model, b3)
    out.update({"itc.i2t_logits": itc["itc_i2t_logits"], "itc.t2i_logits": itc["itc_t2i_logits"],
                "itc.vl_i2t_logits": itc["itc_vl_i2t_logits"], "itc.vl_t2i_logits": itc["itc_vl_t2i_logits"],
                "itc.logit_scale": itc["itc_logit_scale"], "itc.logit_vl_scale": itc["itc_logit_vl_scale"],
                "itc.loss": itc["itc_loss"]})
    out["irtr.loss"] = obj.compute_irtr(model, b3)["irtr_loss"]
    out["itm.logits"] = model.itm_score(vl["cls_feats"])
    hard = obj.compute_itm_hardneg(model, b3, itc["itc_i2t_logits"], itc["itc_t2i_logits"],
                                   fx.tensors["out.itm_hardneg.neg_image_idx"], fx.tensors["out.itm_hardneg.neg_text_idx"])
    out.update({"itm_hardneg.logits": hard["itm_logits"], "itm_hardneg.labels": hard["itm_labels"],
                "itm_hardneg.loss": hard["itm_loss"]})
    mlm = obj.compute_mlm(model, b3)
    out.update({"mlm.logits": mlm["mlm_logits"], "mlm.loss": mlm["mlm_loss"]})
    out["textmlm.loss"] = obj.compute_textonly_mlm(model, b3)["mlm_loss"]
    vqa = obj.compute_vqa(model, b3)
    out.update({"vqa.logits": vqa["vqa_logits"], "vqa.loss": vqa["vqa_loss"]})
    nlvr2 = obj.compute_nlvr2(model, batch)
    out.update({"nlvr2.logits": nlvr2["nlvr2_logits"], "nlvr2.loss": nlvr2["nlvr2_loss"]})
    return out


def assert_all_outputs_match(model: VLMo, fx: FixtureSet) -> None:
    with torch.no_grad():
        out = all_outputs(model, fx, hidden=True)
    expected = fx.group("out")
    compared = 0
    for name, ref in expected.items():
        if name == "grad_loss" or name.startswith("itm_hardneg.neg_"):
            continue
        assert name in out, f"output {name} not computed"
        assert_close_out(out[name].float(), ref.float(), name)
        compared += 1
    assert compared == len(expected) - (3 if "grad_loss" in expected else 2)  # not the loss, not the indices


def test_every_output_and_hidden_state(official):
    assert_all_outputs_match(build(official), official)


def test_vqa_targets(official):
    model = build(official)
    with torch.no_grad():
        vqa = obj.compute_vqa(model, official_batch(official))
    assert torch.equal(vqa["vqa_targets"], official.tensors["in.vqa_targets"])


def test_gradients_of_weighted_loss(official):
    """d(sum_X out.X * gradw.X)/d(param) for every parameter, as stored in the fixtures."""
    model = build(official)
    out = all_outputs(model, official)
    weights = official.group("gradw")
    loss = sum((out[name] * w).sum() for name, w in weights.items())
    assert_close_out(loss.detach(), official.tensors["out.grad_loss"], "grad_loss")
    loss.backward()
    grads = official.group("grad")
    named = dict(model.named_parameters())
    assert set(grads) == set(named), f"parameter sets differ: {set(grads) ^ set(named)}"
    for name, ref in grads.items():
        g = named[name].grad
        g = torch.zeros_like(named[name]) if g is None else g
        assert_close_grad(g, ref, name)
    # padding_idx: the [PAD] row of the word embeddings never receives gradient.
    assert torch.count_nonzero(named["text_embeddings.word_embeddings.weight"].grad[0]) == 0
