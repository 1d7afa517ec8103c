"""Optimizer groups and learning-rate schedule of the official code (spec section 7)."""
from __future__ import annotations

import torch
from torch import nn

# Substring rules of the official set_schedule: parameters whose name contains any of these get no weight decay.
NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight", "norm1.bias", "norm1.weight",
            "norm2.bias", "norm2.weight")
HEADS = ("vqa_classifier", "nlvr2_classifier")  # trained at lr * lr_mult


def param_groups(model: nn.Module, lr: float, weight_decay: float, lr_mult: float) -> list[dict]:
    """Four groups by name substring, exactly as the official code splits them (so e.g. the expert norms
    norm2_text.weight are decayed and the relative-position table is not)."""
    groups = {(d, h, s): [] for d in (True, False) for h in (False, True) for s in (False, True)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not any(nd in name for nd in NO_DECAY)
        head = any(hd in name for hd in HEADS)
        # 0-dim parameters get groups of their own under every strategy: FSDP leaves exactly these replicated (plain
        # tensors, which the fused/foreach kernels cannot mix with its shards in one call), and equal groups
        # everywhere let a checkpoint of one strategy resume under another
        groups[(decay, head, p.dim() == 0)].append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * (lr_mult if head else 1.0),
             "base_lr": lr * (lr_mult if head else 1.0)}
            for (decay, head, _), ps in groups.items() if ps]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, lr_mult: float) -> torch.optim.Optimizer:
    """AdamW(betas 0.9/0.98, eps 1e-8), fused (one kernel over all tensors: 4.5x faster than the per-tensor loop
    for a 25M-parameter model on a 2-core CPU).  (The official transformers AdamW differs only in where eps enters
    the bias correction and in applying the decay after the update.)"""
    device = next(model.parameters()).device
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, lr_mult), lr=lr, betas=(0.9, 0.98), eps=1e-8,
                             **fused)


def warmup_steps_of(warmup, max_steps: int) -> int:
    """The official rule: an int is a step count, a float a fraction of max_steps."""
    return int(max_steps * warmup) if isinstance(warmup, float) else int(warmup)


def lr_factor(step: int, warmup: int, max_steps: int, end_factor: float = 0.0, power: float = 1.0) -> float:
    """Polynomial decay with linear warm-up (power 1: linear to end_lr at max_steps), multiplicative per group."""
    if step < warmup:
        return step / max(1, warmup)
    if step >= max_steps:
        return end_factor
    remaining = 1.0 - (step - warmup) / max(1, max_steps - warmup)
    return (1.0 - end_factor) * remaining ** power + end_factor


def make_scheduler(optimizer: torch.optim.Optimizer, warmup: int, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, max_steps))


STAGE2_TRAINABLE = ("text_embeddings", "token_type_embeddings", "mlp_text", "norm2_text", "mlm_score",
                    "relative_position_bias_table", "transformer.norm")


def freeze_for_text_pretraining(model: nn.Module) -> list[str]:
    """Stage 2 (text-only MLM on a BEiT-initialised model): only the text parts, the rel-pos table and the final
    norm train; self-attention and the image experts stay frozen (official run.py).  Returns the trainable names."""
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(t in name for t in STAGE2_TRAINABLE))
        if p.requires_grad:
            trainable.append(name)
    return trainable
