"""The one-way encoder: a layout planned first, the rows to return, and stochastic depth from explicit draws."""
from __future__ import annotations

import pytest
import torch

from vlmo_fast.config import ModelConfig
from vlmo_fast.model.vlmo import VLMo, cls_rows


def tiny_model(drop_path_rate: float = 0.0) -> VLMo:
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=32, depth=3, num_heads=2, vl_start=2, image_size=32, max_text_len=8,
                      vocab_size=100, drop_path_rate=drop_path_rate)
    return VLMo(cfg)


def inputs():
    g = torch.Generator().manual_seed(3)
    lens = torch.tensor([8, 3, 5], dtype=torch.int32)
    ids = torch.randint(1, 100, (3, 8), generator=g) * (torch.arange(8)[None] < lens[:, None])
    return ids, lens, torch.randn(3, 3, 32, 32, generator=g)


@pytest.mark.parametrize("vl_start", [2, 3])  # with VL layers, and none (the last layer split by modality)
def test_rows_are_the_full_pass_rows_in_their_order(vl_start):
    model = tiny_model().eval()
    model.cfg = model.cfg.replace(vl_start=vl_start)
    ids, lens, images = inputs()
    layout = model.plan(text_lens=lens, num_images=3)
    rows = torch.cat([cls_rows(layout).flip(0), torch.tensor([1, layout.num_rows - 1])])
    with torch.no_grad():
        full = model.encode(layout, text_ids=ids, images=images).feats
        some = model.encode(layout, text_ids=ids, images=images, rows=rows).feats
    assert some.shape == (rows.numel(), 32)
    torch.testing.assert_close(some, full[rows], rtol=1e-5, atol=1e-6)


def test_training_randomness_follows_the_given_draws_not_the_global_generator():
    model = tiny_model(drop_path_rate=0.5).train()
    ids, lens, images = inputs()
    layout = model.plan(text_lens=lens, num_images=3)
    draws = model.pass_draws(layout, generator=torch.Generator().manual_seed(1))
    assert draws.drop_path.shape == (2, 3, 3, 3) and draws.text_keep.shape == (layout.num_text_rows, 32)
    outs = []
    for global_seed in (10, 11):
        torch.manual_seed(global_seed)
        outs.append(model.encode(layout, text_ids=ids, images=images, draws=draws).feats.detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    other = model.pass_draws(layout, generator=torch.Generator().manual_seed(2))
    changed = model.encode(layout, text_ids=ids, images=images, draws=other).feats.detach()
    assert not torch.equal(changed, outs[0])
    assert model.eval().pass_draws(layout) is None  # nothing random in evaluation


def test_a_layout_planned_for_other_inputs_is_refused():
    model = tiny_model().eval()
    ids, lens, images = inputs()
    with pytest.raises(ValueError, match="planned for other inputs"):
        model.encode(model.plan(text_lens=lens), text_ids=ids, images=images)
    with pytest.raises(ValueError, match="images has 2 rows but the layout plans 3 pairs"):
        model.encode(model.plan(text_lens=lens, num_images=3), text_ids=ids, images=images[:2])
    with pytest.raises(ValueError, match="3 texts but 2 images"):
        model.plan(text_lens=lens, num_images=2)
