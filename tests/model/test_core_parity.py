"""The core model on the packed layout with padding DROPPED matches the official fixtures at every real position,
and its packed and padded forms agree for architectures the fixtures do not cover."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close_out, build
from vlmo_fast.config import ModelConfig
from vlmo_fast.model.vlmo import Route, VLMo, cls_rows
from vlmo_fast.ops.packing import make_layout, unpack_text


def real_rows(padded: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """(B, Lt, D) official output -> (sum lens, D) rows at real positions, packed order."""
    return torch.cat([padded[b, : int(n)] for b, n in enumerate(lens)])


def test_core_packed_matches_official(official):
    model = build(official)
    t, out = official.tensors, official.group("out")
    ids, lens, image = t["in.text_ids"], t["in.text_masks"].sum(1), t["in.image"]
    B, Ni = ids.shape[0], model.cfg.num_image_tokens
    with torch.no_grad():
        fused = model.encode(model.plan(text_lens=lens, num_images=B), text_ids=ids, images=image,
                             return_layers=True)
        Tt = fused.layout.num_text_rows
        assert Tt == int(lens.sum())  # padding dropped
        assert_close_out(fused.feats[:Tt], real_rows(out["vl.text_feats"], lens), "vl text rows")
        assert_close_out(fused.feats[Tt:], out["vl.image_feats"].reshape(B * Ni, -1), "vl image rows")
        assert_close_out(model.pooler(fused.feats[cls_rows(fused.layout)]), out["vl.cls_feats"], "vl cls")
        for i, h in enumerate(fused.layers):
            ref = out[f"vl.hidden.{i}"]
            assert_close_out(h[:Tt], real_rows(ref[:, : ids.shape[1]], lens), f"vl hidden {i}")

        text = model.encode(model.plan(text_lens=lens), text_ids=ids, vl_branch=True)
        first = cls_rows(text.layout)
        cls = model.itc_text_proj(text.feats[first])
        assert_close_out(cls / cls.norm(dim=-1, keepdim=True), out["text.cls_feats"], "text cls")
        vl_cls = model.itc_vl_text_proj(text.vl_feats[first])
        assert_close_out(vl_cls / vl_cls.norm(dim=-1, keepdim=True), out["text.cls_vlffn_feats"], "text vl cls")
        assert_close_out(text.hidden[first], out["text.raw_cls_feats"], "text raw cls")
        assert_close_out(unpack_text(text.feats, text.layout, ids.shape[1])[0], out["text.text_feats"][0],
                         "text feats of the full-length caption")

        img = model.encode(model.plan(num_images=B), images=image, vl_branch=True)
        cls = model.itc_image_proj(img.feats[cls_rows(img.layout)])
        assert_close_out(cls / cls.norm(dim=-1, keepdim=True), out["image.cls_feats"], "image cls")
        assert_close_out(img.feats, out["image.image_feats"].reshape(B * Ni, -1), "image feats")


@pytest.mark.parametrize("arch", [
    dict(embed_dim=68, num_heads=2, layer_scale=None, rel_pos_bias=False, abs_pos_emb=True),  # base_plus-like, dh 34
    dict(embed_dim=48, num_heads=2, layer_scale=0.1, rel_pos_bias=True, abs_pos_emb=False),   # base-like, dh 24
])
def test_packed_equals_padded_for_other_archs(arch):
    """Dropping padding changes nothing at real positions, for any head dim and either position scheme."""
    torch.manual_seed(0)
    cfg = ModelConfig(depth=3, vl_start=2, image_size=32, max_text_len=9, vocab_size=300,
                      tasks=("itm", "itc", "mlm"), **arch)
    model = VLMo(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # move every constant init away so no term can hide
            p.add_(0.05 * torch.randn_like(p))
    lens = torch.tensor([9, 4, 2, 6])
    ids = torch.randint(1, 300, (4, 9)) * (torch.arange(9)[None] < lens[:, None])
    image = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        packed = model.encode(model.plan(text_lens=lens, num_images=4), text_ids=ids, images=image)
        padded = model.encode(model.plan(text_lens=lens, num_images=4, padded_text_len=9), text_ids=ids,
                              images=image)
    Tt = packed.layout.num_text_rows
    pad_text = padded.feats[: padded.layout.num_text_rows].view(4, 9, -1)
    torch.testing.assert_close(packed.feats[:Tt], real_rows(pad_text, lens), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed.feats[Tt:], padded.feats[padded.layout.num_text_rows:], rtol=1e-5, atol=1e-5)


def test_drop_path_draws_independently_per_modality_in_split_layers():
    """In training, the FFN branch of a split layer keeps or drops the text and the image rows of a pair with
    independent draws (as the official split FFN calls DropPath twice); in VL layers one draw covers the pair."""
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=32, depth=3, num_heads=2, vl_start=2, image_size=32, max_text_len=6,
                      vocab_size=100, drop_path_rate=0.9)
    model = VLMo(cfg).train()
    P = 64
    layout = make_layout(torch.full((P,), 6), cfg.num_image_tokens)
    draws = model.pass_draws(layout).drop_path[0]
    split_in, vl_in = model._layer_inputs(layout, Route.FUSED, range(1, 3), draws, model._slot_index(layout))
    x = torch.zeros(layout.num_rows, 32)
    Tt = layout.num_text_rows

    def keeps(scale):  # per pair: is its text kept, is its image kept
        return scale[:Tt].view(P, 6)[:, 0] > 0, scale[Tt:].view(P, -1)[:, 0] > 0

    split = model.transformer.blocks[1]._row_scales(split_in, x)[1]
    text_keep, image_keep = keeps(split)
    assert not torch.equal(text_keep, image_keep)  # independent draws differ somewhere among 64 pairs
    keep = 1 - model.transformer.blocks[1].drop_path
    torch.testing.assert_close(split.unique(), torch.tensor([0.0, 1.0 / keep]))
    text_keep, image_keep = keeps(model.transformer.blocks[2]._row_scales(vl_in, x)[1])
    assert torch.equal(text_keep, image_keep)
    assert model.transformer.blocks[0]._row_scales(split_in, x) == (None, None)  # rate 0 in layer 0
