"""Dispatch of packed attention (kernels/attention.py).

CUDA (or VLMO_FAST_KERNELS=triton): the Triton flash kernel.  CPU: the pairs laid out dense (text padded to
the longest real caption of the batch, not to 40); without gradients torch's scaled_dot_product_attention with
the bias and the key mask as one float mask, with gradients the plain reference (measured below).  On a
2-core CPU at VLMo-base shapes (8 pairs, 12 x 64, text 8..20, image 197, fp32, best of 6 on a shared machine,
one thread) SDPA takes 58 ms against the reference's 99 forward with bias,
34 against 64 without, 105 against 148 forward+backward without bias.  With a bias table that needs a
gradient SDPA falls back to its unfused math kernel and is on par with the reference (172 against 198 ms here;
90 against 105 in the reference's favour in a quieter two-thread run).  In a whole training step (vlmo-fast
bench step, dim 256, depth 6, 128 px, batch 16, fp32, two threads) the reference is clearly ahead: 1.24 s against
1.49 s per step, as it broadcasts the bias instead of materialising a (P, H, M, M) mask and its gradient.  So
packed_attention uses the reference with gradients and SDPA without; both equal the reference to fp32 rounding.
A block trained on the CPU goes a shorter road still (vlmo_fast/ops/self_attention.py: the qkv projection on the
dense rows), which took the step above from 1.51 s to 1.21 s.
VLMO_FAST_KERNELS=ref forces the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmo_fast.kernels.attention import dense_bias_and_mask, dense_slots, packed_attention_ref, packed_attention_triton
from .backend import kernel_choice, needs_grad, use_triton
from .layout import PackedLayout


def packed_attention_sdpa(q: Tensor, k: Tensor, v: Tensor, layout: PackedLayout, table: Tensor | None, col: int,
                          window: int, l0: int, scale: float) -> Tensor:
    """The CPU path: dense per-pair SDPA, logits and softmax in fp32 (half inputs are upcast, as officially)."""
    T, H, dh = q.shape
    pair, slot, M = dense_slots(layout)
    P = layout.num_pairs
    dest = pair * M + slot
    cdt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype

    def dense(t: Tensor) -> Tensor:  # (T, H, dh) -> (P, H, M, dh)
        return t.to(cdt).new_zeros(P * M, H, dh).index_copy(0, dest, t.to(cdt)).view(P, M, H, dh).transpose(1, 2)

    bias, valid = dense_bias_and_mask(layout, table, col, H, window, l0)
    # a finite floor rather than -inf keeps a pair without keys free of NaN (its rows are never read)
    mask = valid if bias is None else bias.to(cdt).masked_fill(~valid, torch.finfo(cdt).min)  # (P, H, M, M)
    out = F.scaled_dot_product_attention(dense(q), dense(k), dense(v), attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(P * M, H, dh)[dest].to(q.dtype)


def packed_attention(q: Tensor, k: Tensor, v: Tensor, layout: PackedLayout, table: Tensor | None, col: int,
                     window: int, l0: int, scale: float) -> Tensor:
    """softmax(q k^T * scale + relpos bias) v for every pair of the layout; q, k, v (T, H, dh).

    `table` (R, C) holds the layer's bias in columns [col, col + H) (None: no bias); window and l0 give its
    geometry (vlmo_fast.ops.relpos).
    """
    if use_triton(q):
        return packed_attention_triton(q, k, v, layout, table, col, window, l0, scale)
    with torch.autocast(q.device.type, enabled=False):  # the CPU roads upcast themselves (fp32 logits)
        if kernel_choice() == "ref" or needs_grad(q, k, v, table):
            return packed_attention_ref(q, k, v, layout, table, col, window, l0, scale)
        return packed_attention_sdpa(q, k, v, layout, table, col, window, l0, scale)
