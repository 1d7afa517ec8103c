"""The whole stage-3 training step (ITC + ITM with hard negatives + MLM; forward, backward, AdamW; train mode):
vlmo-fast's default path against the in-project official-style baseline (vlmo_fast/bench.py: text padded to 40,
fp32 logits with a materialised bias, separate passes, per-sample negative sampling, per-tensor AdamW), same
weights and batch, side by side in one run.  Reports samples/s (and MFU on a GPU via `vlmo-fast bench step`).

CPU:  pytest benchmarks/bench_train_step.py      (dim 256, depth 6, 4 heads, 128 px, text 40, batch 16; fp32)
GPU:  the same file runs VLMo-base at 224 px, batch 32, bf16.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from vlmo_fast.bench import PRETRAIN_OBJECTIVES, kernels, official_style_losses, step_optimizers, synthetic_batch
from vlmo_fast.compat import VLMo
from vlmo_fast.flops import device_peak, pretrain_step_flops
from vlmo_fast.train.step import StepDraws, pretrain_losses

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
AMP = torch.bfloat16 if CUDA else None
SHAPE = (dict(embed_dim=768, depth=12, num_heads=12, vlffn_start_layer_index=10, image=224, batch=32) if CUDA else
         dict(embed_dim=256, depth=6, num_heads=4, vlffn_start_layer_index=4, image=128, batch=16))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    image, batch = SHAPE["image"], SHAPE["batch"]
    arch = {k: v for k, v in SHAPE.items() if k not in ("image", "batch")}
    arch.update(mlp_ratio=4, use_abs_pos_emb=False, need_relative_position_embed=True, layer_scale_init_values=0.1)
    model = VLMo({"max_text_len": 40, "image_size": image, "drop_path_rate": 0.1}, arch=arch).to(DEVICE).train()
    data = synthetic_batch(model.cfg, batch, 40, 0, DEVICE)
    return model, data, step_optimizers(model)


def autocast():
    return torch.autocast(DEVICE.type, dtype=AMP) if AMP else contextlib.nullcontext()


@pytest.mark.parametrize("impl", ["vlmo_fast", "official_style"])
def test_train_step(benchmark, timed, setup, impl):
    model, batch, optimizers = setup
    opt = optimizers[impl]
    gen = torch.Generator(DEVICE).manual_seed(0)

    def step():
        with (kernels("ref") if impl == "official_style" else contextlib.nullcontext()), autocast():
            loss = (official_style_losses(model, batch) if impl == "official_style"
                    else sum(pretrain_losses(model, batch, PRETRAIN_OBJECTIVES, draws=StepDraws(gen))[0].values()))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    timed(step, DEVICE, work=batch["text_ids"].shape[0], unit="samples/s", rounds=4, warmup=1)
    if CUDA:
        peak = device_peak(torch.cuda.get_device_name(DEVICE))
        flops = pretrain_step_flops(model.cfg, batch["text_lens"].tolist())
        benchmark.extra_info["mfu"] = flops / benchmark.stats.stats.median / peak if peak else None
