"""Helpers shared by tests of several areas: the official fixtures (../shared/fixtures/official, FIXTURES.md there)
and the official model and batch they describe, the tiny training run, a tiny official checkpoint, one encoder pass.
An area's own helpers sit beside its tests (data/helpers.py, kernels/parity.py, csrc/batches.py, distributed/common.py).
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from vlmo_fast.compat import VLMo as OfficialVLMo
from vlmo_fast.compat import objectives as obj
from vlmo_fast.config import preset
from vlmo_fast.model.vlmo import Encoding, VLMo
from vlmo_fast.ops.relpos import segment_index
from vlmo_fast.train.tasks import resolve
from vlmo_fast.train.trainer import Trainer

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


# The tiny training run of tests: a tiny model, small batches, a small evaluation.
# compile=False: compiling the step costs about a minute per shape on this CPU; tests/train/test_compiled_step.py
# covers the compiled step (a later compile=True overrides this)
TINY = ["model_arch=vlmo_tiny_patch16", "image_size=64", "max_text_len=24", "per_gpu_batchsize=4", "batch_size=4",
        "eval_limit=8", "eval_batch_size=8", "num_workers=0", "log_every=1", "compile=False"]


def run(root, log_dir, *extra) -> list[dict]:
    config = resolve("task_mlm_itm_itc_tiny", TINY + [f"data_root={root}", f"log_dir={log_dir}",
                                                      "drop_path_rate=0.1", *extra])
    Trainer(config).fit()
    return [json.loads(line) for line in (Path(log_dir) / "log.jsonl").read_text().splitlines()]


def losses(log: list[dict]) -> list[float]:
    return [r["loss"] for r in log]


def build(fx: FixtureSet) -> OfficialVLMo:
    model = OfficialVLMo(fx.meta["official_config"], arch=fx.meta["arch"])
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


def all_outputs(model: OfficialVLMo, fx: FixtureSet, hidden: bool = False) -> dict[str, torch.Tensor]:
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


def assert_all_outputs_match(model: OfficialVLMo, fx: FixtureSet) -> None:
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


def assert_gradients_match(model: OfficialVLMo, official: FixtureSet) -> None:
    """d(sum_X out.X * gradw.X)/d(param) for every parameter, as stored in the fixtures."""
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


def official_bytes() -> tuple[bytes, dict[str, torch.Tensor]]:
    """A tiny official-format checkpoint: the state dict under "model", with the three index matrices, text
    positions for 40 tokens (the released files' length)."""
    torch.manual_seed(0)
    model = VLMo(preset("vlmo_tiny_patch16", image_size=64, max_text_len=40, tasks=("itm", "itc", "mlm")))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    window, lt = 4, 40
    sd["relative_position_index"] = segment_index(0, window * window + 1, window, 196)
    sd["text_relative_position_index"] = segment_index(lt, 0, window, 196)
    sd["text_imag_relative_position_index"] = segment_index(lt, window * window + 1, window, 196)
    buf = io.BytesIO()
    torch.save({"model": sd, "epoch": 1}, buf)
    return buf.getvalue(), sd


def encode_pair_batch(model: VLMo, text_ids: Tensor | None = None, text_lens: Tensor | None = None,
                      images: Tensor | None = None, **kwargs) -> Encoding:
    """Plan and run one pass over a padded batch (every row returned unless rows= is given)."""
    layout = model.plan(text_lens=text_lens, num_images=0 if images is None else images.shape[0])
    return model.encode(layout, text_ids=text_ids, images=images, **kwargs)
