"""Retrieval metrics by the official definition, and ITM re-ranking of the ITC top-k."""
from __future__ import annotations

import pytest
import torch

from vlmo_fast.config import ModelConfig
from vlmo_fast.model.inference import itm_logits
from vlmo_fast.model.vlmo import VLMo
from vlmo_fast.train.evaluate import itm_rerank, recall_at_k


def test_recall_at_k_official_definition():
    # 3 images, 4 texts; texts 0,1 belong to image 0, text 2 to image 1, text 3 to image 2.
    text_image = torch.tensor([0, 0, 1, 2])
    scores = torch.tensor([[0.1, 0.9, 0.0, 0.2],    # image 0: best text 1 (its own)      -> TR@1 hit
                           [0.0, 0.8, 0.5, 0.1],    # image 1: best text 1 (not its own)  -> TR@1 miss, TR@5 hit
                           [0.7, 0.0, 0.0, 0.6]])   # image 2: best text 0                -> TR@1 miss
    r = recall_at_k(scores, text_image, ks=(1, 5))
    assert r["recalls/tr_r1"] == pytest.approx(1 / 3) and r["recalls/tr_r5"] == 1.0
    # IR: text 0 -> image 2 (miss), text 1 -> image 0 (hit), text 2 -> image 1 (hit), text 3 -> image 2 (hit)
    assert r["recalls/ir_r1"] == pytest.approx(3 / 4) and r["recalls/ir_r5"] == 1.0


def test_itm_rerank_rescores_the_top_k_only():
    torch.manual_seed(0)
    model = VLMo(ModelConfig(embed_dim=32, depth=2, num_heads=2, vl_start=1, image_size=32, max_text_len=8,
                             vocab_size=100)).eval()
    ids = torch.randint(1, 100, (5, 8))
    lens = torch.tensor([8, 5, 3, 6, 4])
    images = torch.randn(4, 3, 32, 32)
    scores = torch.randn(4, 5)
    out = itm_rerank(model, scores, ids, lens, images, k=2, batch_size=3, device="cpu")
    candidates = {(i, t) for i, row in enumerate(scores.topk(2, dim=1).indices.tolist()) for t in row}
    candidates |= {(i, t) for t, col in enumerate(scores.t().topk(2, dim=1).indices.tolist()) for i in col}
    for i in range(4):
        for t in range(5):
            if (i, t) in candidates:  # re-scored: ITC + ITM positive logit of the fused pass
                with torch.no_grad():
                    itm = itm_logits(model, ids[t:t + 1], lens[t:t + 1], images[i:i + 1])[0, 1]
                torch.testing.assert_close(out[i, t], scores[i, t] + itm, rtol=1e-5, atol=1e-5)
            else:  # kept below every candidate
                assert out[i, t] == scores[i, t] - 1e4
