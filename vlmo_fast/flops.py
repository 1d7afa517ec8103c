"""FLOP counts of VLMo passes, for MFU (model FLOPs utilisation) in the trainer and the benchmarks.

A pass over T packed rows through L layers costs, per layer (multiply-add = 2 FLOPs):
    qkv 6*T*D^2 + output projection 2*T*D^2 + FFN 4*T*D*F + attention 4*D*sum_p(Nq_p * Nk_p)
where pair p has Nq_p query rows and Nk_p keys.  Backward costs twice the forward, so a training step is 3x the
forward FLOPs of every pass it runs.  Only the useful (unpadded) work counts, so an implementation that computes on
padding gets no credit for it.  Embeddings, heads and norms are left out (under 2% at VLMo-base shapes).
"""
from __future__ import annotations

from vlmo_fast.config import ModelConfig


def pass_flops(cfg: ModelConfig, text_lens: list[int], image_tokens: int, layers: int | None = None) -> float:
    """Forward FLOPs of one pass over pairs with these real text lengths and image_tokens image tokens each
    (text_lens all 0 for an image-only pass, image_tokens 0 for a text-only pass)."""
    D, F = cfg.embed_dim, cfg.mlp_dim
    L = cfg.depth if layers is None else layers
    T = sum(text_lens) + image_tokens * len(text_lens)
    attn = sum((t + image_tokens) ** 2 for t in text_lens)
    return L * (8 * T * D * D + 4 * T * D * F + 4 * D * attn)


def step_flops(cfg: ModelConfig, tasks: set[str], text_lens: list[int]) -> float:
    """FLOPs (forward + backward) of one training step of the fused objectives (vlmo_fast/train/step.py) on pairs
    with these real caption lengths: ITC runs the text and image passes with their VL-FFN branch, ITM three fused
    passes (positives, two hard-negative sets), MLM one, VQA one, NLVR2 two, IRTR the two unimodal passes."""
    ni, top, none = cfg.num_image_tokens, cfg.depth - cfg.vl_start, [0] * len(text_lens)
    text, image, fused = pass_flops(cfg, text_lens, 0), pass_flops(cfg, none, ni), pass_flops(cfg, text_lens, ni)
    fwd = 0.0
    if "itc" in tasks:
        fwd += text + image + pass_flops(cfg, text_lens, 0, top) + pass_flops(cfg, none, ni, top)
    if "irtr" in tasks:
        fwd += text + image
    fwd += fused * (3 * ("itm" in tasks) + ("mlm" in tasks) + ("vqa" in tasks) + 2 * ("nlvr2" in tasks))
    fwd += text * ("textmlm" in tasks)
    return 3.0 * fwd


def pretrain_step_flops(cfg: ModelConfig, text_lens: list[int]) -> float:
    """A stage-3 step (ITC + ITM with hard negatives + MLM)."""
    return step_flops(cfg, {"itc", "itm", "mlm"}, text_lens)


# Dense bf16 peak of the devices the project reports on (FLOP/s).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def device_peak(name: str) -> float | None:
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak
    return None
