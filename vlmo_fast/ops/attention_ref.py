"""The torch reference of packed attention (the ground truth of the kernel tests) and the dense per-pair form
the CPU roads share: every pair laid out as [text(max_text_q); image(max_image)], M slots, keys masked per pair.
Triton-free, so the CPU dispatch never imports triton."""
from __future__ import annotations

import torch
from torch import Tensor

from .attention_bias import AttentionBias
from .layout import PackedLayout


def logits_dtype(dtype: torch.dtype) -> torch.dtype:
    """Attention logits and softmax run in fp32 for half inputs (as the official code upcasts), else in the inputs'
    dtype (fp64 references stay fp64)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def dense_slots(layout: PackedLayout) -> tuple[Tensor, Tensor, int]:
    """For every packed row, its (pair, slot) in the dense per-pair form, and the slots per pair M."""
    T, Tt = layout.num_rows, layout.num_text_rows
    rows = torch.arange(T, device=layout.device)
    pair = layout.row_pair.long()
    start = torch.where(rows < Tt, layout.text_start.long()[pair], layout.image_start.long()[pair])
    slot = rows - start + torch.where(rows < Tt, 0, layout.max_text_q)
    return pair, slot, layout.max_text_q + layout.max_image


def dense_key_mask(layout: PackedLayout) -> Tensor:
    """(P, 1, 1, M) bool: which slots of each pair are keys (real text tokens and image tokens)."""
    Lq, Li = layout.max_text_q, layout.max_image
    slot = torch.arange(Lq + Li, device=layout.device)
    key_len = torch.where(slot[None, :] < Lq, layout.text_k_len.long()[:, None],
                          layout.image_len.long()[:, None] + Lq)  # (P, M)
    lo = torch.where(slot[None, :] < Lq, 0, Lq)
    valid = (slot[None, :] >= lo) & (slot[None, :] < key_len)
    return valid[:, None, None, :]


def check_bias(layout: PackedLayout, bias: AttentionBias | None, num_heads: int) -> None:
    if bias is None:
        return
    M = layout.max_text_q + layout.max_image
    if bias.text_slots != layout.max_text_q or tuple(bias.dense.shape) != (num_heads, M, M):
        raise ValueError(f"attention bias {tuple(bias.dense.shape)} with {bias.text_slots} text slots does not fit "
                         f"the layout ({num_heads} heads, {layout.max_text_q} text + {layout.max_image} image slots)")


def packed_attention_ref(q: Tensor, k: Tensor, v: Tensor, layout: PackedLayout, bias: AttentionBias | None = None,
                         scale: float | None = None, upcast: bool = True) -> Tensor:
    """Reference: q, k, v (T, H, dh) -> (T, H, dh), computed like the official code (fp32 logits and softmax)."""
    T, H, dh = q.shape
    check_bias(layout, bias, H)
    scale = dh ** -0.5 if scale is None else scale
    pair, slot, M = dense_slots(layout)
    P = layout.num_pairs

    def dense(t: Tensor) -> Tensor:  # (T, H, dh) -> (P, H, M, dh)
        out = t.new_zeros(P * M, H, dh).index_copy(0, pair * M + slot, t)
        return out.view(P, M, H, dh).transpose(1, 2)

    valid = dense_key_mask(layout)
    logit_dtype = logits_dtype(q.dtype) if upcast else q.dtype
    logits = (dense(q) * scale).to(logit_dtype) @ dense(k).to(logit_dtype).transpose(-1, -2)  # (P, H, M, M)
    if bias is not None:
        logits = logits + bias.dense.to(logit_dtype)
    logits = logits.masked_fill(~valid, torch.finfo(logit_dtype).min)
    attn = logits.softmax(-1).to(q.dtype)
    out = attn @ dense(v)  # (P, H, M, dh)
    return out.transpose(1, 2).reshape(P * M, H, dh)[pair * M + slot]
