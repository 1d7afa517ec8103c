"""A block's whole self-attention before the output projection: qkv projection, packed attention, and the rows read.

On CUDA (or with VLMO_FAST_KERNELS=triton) it is the qkv GEMM on the packed rows, writing each head at the kernels'
aligned width (the weight's rows padded with zeros), then the Triton kernel on that one (T, 3, H, dh) tensor, whose
gradient comes back as one tensor.  VLMO_FAST_KERNELS=ref: the GEMM, then the reference.  Training on
the CPU takes a shorter road: the block input x (D wide) is gathered once into the dense per-pair form, the qkv
GEMM runs there, and only the output rows that are read are gathered back.  The per-pair form then costs one
D-wide gather and its index_add in the backward, where packed q, k, v would be scattered 3D wide into zero-filled
buffers and gathered back (with zero-filled gradients).  Padded slots take row 0's values: their keys are masked
and their queries never read, so they receive exactly zero gradient.  The qkv GEMM spends the padded slots' rows
(a few percent: text is padded to the longest caption of the batch only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import aligned_head_dim, packed_attention, packed_attention_qkv
from .attention_bias import AttentionBias
from .attention_ref import dense_key_mask, dense_slots, logits_dtype
from .backend import kernel_choice, needs_grad, use_triton
from .layout import PackedLayout


def self_attention(x: Tensor, weight: Tensor, bias: Tensor | None, num_heads: int, layout: PackedLayout,
                   attn_bias: AttentionBias | None, scale: float, rows: Tensor | None = None) -> Tensor:
    """x (T, D) -> attention output (T, D), or its rows `rows` only; weight (3D, D) and bias (3D,) of the qkv
    projection; attn_bias the layer's relative position bias (or None)."""
    if _dense_path(x, weight, attn_bias):
        return dense_self_attention(x, weight, bias, num_heads, layout, attn_bias, scale, rows)
    T, D = x.shape
    dh = D // num_heads
    if use_triton(x):
        out = packed_attention_qkv(_aligned_qkv(x, weight, bias, num_heads), layout, attn_bias, scale)
        out = out[..., :dh].reshape(T, D)
    else:
        qkv = F.linear(x, weight, bias).view(T, 3, num_heads, dh)
        out = packed_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], layout, attn_bias, scale).reshape(T, D)
    return out if rows is None else out.index_select(0, rows)


def _aligned_qkv(x: Tensor, weight: Tensor, bias: Tensor | None, num_heads: int) -> Tensor:
    """The qkv projection (T, 3, H, dh_aligned), the columns past dh zero (zero weight rows): the GEMM writes
    the kernels' aligned layout directly, and the padding's gradient falls away with the pad's backward."""
    T, D = x.shape
    dh = D // num_heads
    pad = aligned_head_dim(dh) - dh
    if pad:
        weight = F.pad(weight.view(3, num_heads, dh, D), (0, 0, 0, pad)).reshape(-1, D)
        bias = None if bias is None else F.pad(bias.view(3, num_heads, dh), (0, pad)).reshape(-1)
    return F.linear(x, weight, bias).view(T, 3, num_heads, dh + pad)


def _dense_path(x: Tensor, weight: Tensor, attn_bias: AttentionBias | None) -> bool:
    """CPU training on the default kernels (inference keeps SDPA; ref and triton are forced choices)."""
    return (not x.is_cuda and kernel_choice() == "auto"
            and needs_grad(x, weight, None if attn_bias is None else attn_bias.dense))


def dense_self_attention(x: Tensor, weight: Tensor, bias: Tensor | None, num_heads: int, layout: PackedLayout,
                         attn_bias: AttentionBias | None, scale: float, rows: Tensor | None = None) -> Tensor:
    """The dense per-pair road (see the module docstring); logits and softmax in fp32 as the reference."""
    T, D = x.shape
    H, P = num_heads, layout.num_pairs
    pair, slot, M = dense_slots(layout)
    # One modality and no padded slot (an image-only pass, uniform captions): the dense form is the packed form
    same = T == P * M and layout.num_text_rows in (0, T)
    to_dense = pair * M + slot  # (T,) the dense slot of every packed row
    if not same:
        from_dense = torch.zeros(P * M, dtype=torch.long, device=x.device).index_copy_(
            0, to_dense, torch.arange(T, device=x.device))
        x = x.index_select(0, from_dense)
    # the softmax scale folded into the q rows of the projection: a (D, D) multiply instead of one per logit row
    fold = torch.ones(3 * D, dtype=weight.dtype, device=weight.device)
    fold[:D] = scale
    qkv = F.linear(x, weight * fold[:, None], None if bias is None else bias * fold).view(P, M, 3, H, D // H)
    logit_dtype = logits_dtype(qkv.dtype)
    with torch.autocast(x.device.type, enabled=False):  # logits, softmax and attn @ v in fp32 under autocast too
        q, k, v = qkv.to(logit_dtype).permute(2, 0, 3, 1, 4).unbind(0)  # (P, H, M, dh) each
        valid = dense_key_mask(layout)
        logits = q @ k.transpose(-1, -2)  # (P, H, M, M), updated in place below (no extra copies)
        if attn_bias is not None:
            logits.add_(attn_bias.dense.to(logit_dtype))
        logits.masked_fill_(~valid, torch.finfo(logit_dtype).min)
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(P * M, D).to(x.dtype)
    if same and rows is None:
        return out
    return out.index_select(0, to_dense if rows is None else to_dense.index_select(0, rows))
