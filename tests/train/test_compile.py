"""torch.compile of the MoME blocks as the trainer compiles them on CUDA, where attention and the expert FFN are
Triton custom ops (forced here with VLMO_FAST_KERNELS=triton, run by the interpreter): one full graph per block,
equal to eager, over batches of other caption lengths; plus one inductor smoke test."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import encode_pair_batch
from vlmo_fast.config import ModelConfig
from vlmo_fast.model.vlmo import VLMo


@pytest.fixture(autouse=True)
def triton_kernels(monkeypatch):
    monkeypatch.setenv("VLMO_FAST_KERNELS", "triton")


def model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(embed_dim=32, depth=2, num_heads=2, vl_start=1, image_size=32, max_text_len=10,
                      vocab_size=200, drop_path_rate=0.0)
    return VLMo(cfg).train(), torch.randint(1, 200, (3, 10)), torch.randn(3, 3, 32, 32)


def feats_and_grads(model, ids, lens, images):
    model.zero_grad()
    out = encode_pair_batch(model, ids, lens, images).feats
    out.square().sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_blocks_compile_fullgraph_and_match_eager():
    model, ids, images = model_and_batch()
    for lens in (torch.tensor([10, 5, 7]), torch.tensor([4, 6, 2])):
        eager = feats_and_grads(model, ids, lens, images)
        compiled_model, _, _ = model_and_batch()
        compiled_model.load_state_dict(model.state_dict())
        for blk in compiled_model.transformer.blocks:
            blk.compile(backend="aot_eager", fullgraph=True, dynamic=True)
        out, grads = feats_and_grads(compiled_model, ids, lens, images)
        torch.testing.assert_close(out, eager[0], rtol=1e-5, atol=1e-6)
        for k, g in eager[1].items():
            torch.testing.assert_close(grads[k], g, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_inductor_smoke():
    model, ids, images = model_and_batch()
    model.eval()
    lens = torch.tensor([10, 5, 7])
    with torch.no_grad():
        eager = encode_pair_batch(model, ids, lens, images).feats
        model.transformer.blocks[0].compile(dynamic=True)
        out = encode_pair_batch(model, ids, lens, images).feats
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
