"""Dispatch of packed attention (kernels/attention.py).

CUDA (or VLMO_FAST_KERNELS=triton): the Triton flash kernel on the qkv projection's (T, 3, H, dh) output, its
head dim stored at an aligned width.  CPU: the pairs laid out dense (text padded to the longest real caption of
the batch, not to 40); without gradients torch's scaled_dot_product_attention with the bias and the key mask as
one float mask, with gradients the plain reference (faster there: it broadcasts the bias instead of
materialising a (P, H, M, M) mask and its gradient; timings in benchmarks/results/).  A block trained on the CPU
goes a shorter road still (vlmo_fast/ops/self_attention.py).  VLMO_FAST_KERNELS=ref forces the reference.

The kernels are imported only when they run, so the CPU paths never import triton.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention_bias import AttentionBias
from .attention_ref import check_bias, dense_key_mask, dense_slots, logits_dtype, packed_attention_ref
from .backend import kernel_choice, needs_grad, use_triton
from .layout import PackedLayout


def aligned_head_dim(head_dim: int) -> int:
    """The width the kernels store a head at: the power of two (>= 16) their tiles use, so K/V rows load in
    16-byte pieces without masked columns (base_plus's 34 is stored as 64)."""
    return max(16, 1 << (head_dim - 1).bit_length())


def packed_attention_qkv(qkv: Tensor, layout: PackedLayout, bias: AttentionBias | None, scale: float) -> Tensor:
    """The Triton kernel on qkv (T, 3, H, dh) -> (T, H, dh); gradients to qkv as one tensor and to the bias."""
    from vlmo_fast.kernels.attention import packed_attention_triton  # imports triton: only where it runs

    if qkv.shape[0] != layout.num_rows:
        raise ValueError(f"{qkv.shape[0]} rows but the layout has {layout.num_rows}")
    check_bias(layout, bias, qkv.shape[2])
    seg = (layout.text_start, layout.text_q_len, layout.text_k_len, layout.image_start, layout.image_len)
    return packed_attention_triton(qkv, seg, layout.max_text_q, layout.max_image,
                                   None if bias is None else bias.dense, scale)


def packed_attention_sdpa(q: Tensor, k: Tensor, v: Tensor, layout: PackedLayout, bias: AttentionBias | None,
                          scale: float) -> Tensor:
    """The CPU path: dense per-pair SDPA, logits and softmax in fp32 (half inputs are upcast, as officially)."""
    T, H, dh = q.shape
    check_bias(layout, bias, H)
    pair, slot, M = dense_slots(layout)
    P = layout.num_pairs
    dest = pair * M + slot
    logit_dtype = logits_dtype(q.dtype)

    def dense(t: Tensor) -> Tensor:  # (T, H, dh) -> (P, H, M, dh)
        t = t.to(logit_dtype)
        return t.new_zeros(P * M, H, dh).index_copy(0, dest, t).view(P, M, H, dh).transpose(1, 2)

    valid = dense_key_mask(layout)
    # a finite floor rather than -inf keeps a pair without keys free of NaN (its rows are never read)
    floor = torch.finfo(logit_dtype).min
    mask = valid if bias is None else bias.dense.to(logit_dtype).masked_fill(~valid, floor)  # (P, H, M, M)
    out = F.scaled_dot_product_attention(dense(q), dense(k), dense(v), attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(P * M, H, dh)[dest].to(q.dtype)


def packed_attention(q: Tensor, k: Tensor, v: Tensor, layout: PackedLayout, bias: AttentionBias | None,
                     scale: float) -> Tensor:
    """softmax(q k^T * scale + bias) v for every pair of the layout; q, k, v (T, H, dh); `bias` the layer's
    relative position bias (vlmo_fast/ops/attention_bias.py) or None."""
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one (T, H, dh) shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if use_triton(q):
        return packed_attention_qkv(torch.stack([q, k, v], 1), layout, bias, scale)
    dense_bias = None if bias is None else bias.dense
    with torch.autocast(q.device.type, enabled=False):  # the CPU roads upcast themselves (fp32 logits)
        if kernel_choice() == "ref" or needs_grad(q, k, v, dense_bias):
            return packed_attention_ref(q, k, v, layout, bias, scale)
        return packed_attention_sdpa(q, k, v, layout, bias, scale)
