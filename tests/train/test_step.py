"""The fused training step computes the official math: same losses and gradients as the official-style
computation (vlmo_fast.compat.objectives, itself checked against the official fixtures) for the same batch and
hard negatives."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import build, official_batch
from vlmo_fast.compat import objectives as official
from vlmo_fast.config import ModelConfig
from vlmo_fast.model.vlmo import VLMo
from vlmo_fast.train import step


def grads(model) -> dict[str, torch.Tensor]:
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}


def compare(model, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    model.zero_grad()
    theirs.backward()
    g_ref = grads(model)
    model.zero_grad()
    ours.backward()
    for k, g in grads(model).items():
        scale = g_ref[k].abs().max().item()
        torch.testing.assert_close(g, g_ref[k], rtol=0, atol=1e-5 + 1e-4 * scale, msg=k)


@pytest.fixture
def setup(official):
    return build(official), official_batch(official), official


def test_pretraining_step_equals_official(setup):
    model, batch, fx = setup
    b = {k: v for k, v in batch.items() if not k.startswith("image_")}
    neg = (fx.tensors["out.itm_hardneg.neg_image_idx"], fx.tensors["out.itm_hardneg.neg_text_idx"])
    losses, metrics = step.pretrain_losses(model, b, {"itc", "itm", "mlm"}, draws=step.StepDraws(negatives=neg))
    ref = official.compute_itc(model, b)
    ref_itm = official.compute_itm_hardneg(model, b, ref["itc_i2t_logits"], ref["itc_t2i_logits"], *neg)
    ref_mlm = official.compute_mlm(model, b)
    torch.testing.assert_close(losses["itc_loss"], ref["itc_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["itm_loss"], ref_itm["itm_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["mlm_loss"], ref_mlm["mlm_loss"], rtol=1e-5, atol=1e-6)
    compare(model, sum(losses.values()), ref["itc_loss"] + ref_itm["itm_loss"] + ref_mlm["mlm_loss"])
    assert set(metrics) == {"itc_i2t_accuracy", "itc_t2i_accuracy", "itm_accuracy", "mlm_accuracy"}


def test_textmlm_vqa_nlvr2_irtr_equal_official(setup):
    model, batch, _ = setup
    b = {k: v for k, v in batch.items() if not k.startswith("image_")}
    compare(model, step.textmlm_losses(model, b)[0]["mlm_loss"], official.compute_textonly_mlm(model, b)["mlm_loss"])
    compare(model, step.vqa_losses(model, b)[0]["vqa_loss"], official.compute_vqa(model, b)["vqa_loss"])
    compare(model, step.nlvr2_losses(model, batch)[0]["nlvr2_loss"], official.compute_nlvr2(model, batch)["nlvr2_loss"])
    compare(model, step.irtr_losses(model, b)[0]["irtr_loss"], official.compute_irtr(model, b)["irtr_loss"])


def test_sampled_negatives_exclude_the_positive():
    torch.manual_seed(0)
    sim = torch.randn(8, 8) * 5
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        neg_img, neg_txt = step.objectives.hard_negative_indices(sim, sim.t(), 8, gen)
        assert not (neg_img == torch.arange(8)).any() and not (neg_txt == torch.arange(8)).any()


def test_activation_checkpointing_gives_the_same_gradients(official):
    """Recomputing the blocks in the backward (drop path on: the RNG is replayed) changes no gradient."""
    model = build(official).train()
    for blk in model.transformer.blocks:
        blk.drop_path = 0.3
    batch = {k: v for k, v in official_batch(official).items() if not k.startswith("image_")}
    neg = (official.tensors["out.itm_hardneg.neg_image_idx"], official.tensors["out.itm_hardneg.neg_text_idx"])

    def grads_of(checkpointing: bool):
        model.zero_grad()
        model.transformer.activation_checkpointing = checkpointing
        torch.manual_seed(7)
        losses, _ = step.pretrain_losses(model, batch, {"itc", "itm", "mlm"}, draws=step.StepDraws(negatives=neg))
        sum(losses.values()).backward()
        return grads(model)

    plain, recomputed = grads_of(False), grads_of(True)
    for k in plain:
        torch.testing.assert_close(recomputed[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)


def test_a_step_is_a_function_of_its_draws():
    """Hard negatives and stochastic depth come from the step's draws: the same generator seed gives the same
    losses whatever the global generator did, another seed other ones."""
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=32, depth=2, num_heads=2, vl_start=1, image_size=32, max_text_len=8,
                      vocab_size=100, drop_path_rate=0.5)
    model = VLMo(cfg).train()
    g = torch.Generator().manual_seed(5)
    lens = torch.tensor([8, 4, 6, 3], dtype=torch.int32)
    ids = torch.randint(5, 100, (4, 8), generator=g) * (torch.arange(8)[None] < lens[:, None])
    labels = torch.where(torch.arange(8)[None] == 1, ids, -100)
    batch = {"text_ids": ids, "text_lens": lens, "text_ids_mlm": ids, "text_labels_mlm": labels,
             "image": [torch.randn(4, 3, 32, 32, generator=g)]}

    def losses(seed: int, global_seed: int) -> list[float]:
        torch.manual_seed(global_seed)
        draws = step.StepDraws(torch.Generator().manual_seed(seed),
                               dropout_generator=torch.Generator().manual_seed(seed))
        out, _ = step.pretrain_losses(model, batch, {"itc", "itm", "mlm"}, draws=draws)
        return [out[k].item() for k in sorted(out)]

    assert losses(1, 10) == losses(1, 11)
    assert losses(1, 10) != losses(2, 10)
