"""Packed multi-pair attention with VLMo's relative position bias.

Computes, for every query row of pair p, softmax(q k^T * scale + bias) v over the keys of pair p: its real
text tokens and its image tokens (design.md, "The packed layout").  The bias of a (query, key) pair is read
from the layer's columns of the relative-position table by the rule of kernels/relpos.py, from the
modality and in-segment position of query and key, so it is never materialised per pair.

Why it is fast: one flash-attention style program per (pair, query tile, head) walks only its own pair's keys
(text tiles, then image tiles), so no padding to the official 40 text tokens and no (P, H, N, N) logits.  The
bias row is computed in registers from positions; the modality of the query tile and of the key loop are
compile-time specialisations, so the cross-modal blocks read a single table entry.  Backward (attention_bwd.py)
follows flash-attention 2: delta = rowsum(dO * O), one dk/dv program per key tile, one dq program per query tile.

Limits: head dim 16..128 (padded to a power of two with masks), fp32/fp16/bf16 with fp32 softmax; text segments
at most L0 tokens and image segments at most W*W + 1 tokens when a bias table is given.

Order: torch reference, shared jit helpers, forward kernel, launcher, custom ops, autograd, public function.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .layout import PackedLayout

from .attention_bwd import attention_bwd
from .autocast import compute_dtype
from .attention_tiles import (LOG2E, block_d, bias, geometry, head_columns, load_rows, prune_query_configs,
                              query_configs, rows_major, segment_tile)
from .relpos import IMAGE, TEXT, relpos_index, table_rows
from .tuning import bench_fn


def dense_slots(layout: PackedLayout) -> tuple[Tensor, Tensor, int]:
    """For every packed row, its (pair, slot) in the dense per-pair form [text(max_text_q); image(max_image)],
    and the slots per pair M."""
    T, Tt = layout.num_rows, layout.num_text_rows
    rows = torch.arange(T, device=layout.device)
    pair = layout.row_pair.long()
    start = torch.where(rows < Tt, layout.text_start.long()[pair], layout.image_start.long()[pair])
    slot = rows - start + torch.where(rows < Tt, 0, layout.max_text_q)
    return pair, slot, layout.max_text_q + layout.max_image


def dense_bias_and_mask(layout: PackedLayout, table: Tensor | None, col: int, num_heads: int, window: int,
                        l0: int) -> tuple[Tensor | None, Tensor]:
    """The dense (H, M, M) bias (identical for every pair) and the (P, 1, 1, M) key mask of the dense form."""
    Lq, Li = layout.max_text_q, layout.max_image
    dev = layout.device
    slot = torch.arange(Lq + Li, device=dev)
    mod = torch.where(slot < Lq, TEXT, IMAGE)
    pos = torch.where(slot < Lq, slot, slot - Lq)
    bias = None
    if table is not None:
        idx = relpos_index(mod[:, None], pos[:, None], mod[None, :], pos[None, :], window, l0)
        bias = table[:, col:col + num_heads][idx].permute(2, 0, 1)  # (H, M, M)
    key_len = torch.where(slot[None, :] < Lq, layout.text_k_len.long()[:, None],
                          layout.image_len.long()[:, None] + Lq)  # (P, M)
    lo = torch.where(slot[None, :] < Lq, 0, Lq)
    valid = (slot[None, :] >= lo) & (slot[None, :] < key_len)
    return bias, valid[:, None, None, :]


def packed_attention_ref(q: Tensor, k: Tensor, v: Tensor, layout: PackedLayout, table: Tensor | None = None,
                         col: int = 0, window: int = 1, l0: int = 196, scale: float | None = None,
                         upcast: bool = True) -> Tensor:
    """Reference: q, k, v (T, H, dh) -> (T, H, dh), computed like the official code (fp32 logits and softmax).

    `table` (R, C) with the layer's bias in columns [col, col + H), or None for no bias.
    """
    T, H, dh = q.shape
    scale = dh ** -0.5 if scale is None else scale
    pair, slot, M = dense_slots(layout)
    P = layout.num_pairs

    def dense(t: Tensor) -> Tensor:  # (T, H, dh) -> (P, H, M, dh)
        out = t.new_zeros(P * M, H, dh).index_copy(0, pair * M + slot, t)
        return out.view(P, M, H, dh).transpose(1, 2)

    bias, valid = dense_bias_and_mask(layout, table, col, H, window, l0)
    cdt = torch.float32 if upcast and q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    logits = (dense(q) * scale).to(cdt) @ dense(k).to(cdt).transpose(-1, -2)  # (P, H, M, M)
    if bias is not None:
        logits = logits + bias.to(cdt)
    logits = logits.masked_fill(~valid, torch.finfo(cdt).min)
    attn = logits.softmax(-1).to(q.dtype)
    out = attn @ dense(v)  # (P, H, M, dh)
    return out.transpose(1, 2).reshape(P * M, H, dh)[pair * M + slot]


# ----------------------------------------------------------------------------------------------------------
# Triton: forward
# ----------------------------------------------------------------------------------------------------------
# _fwd_keys: online-softmax update of one query tile over the keys [k_row0, k_row0 + k_len) of one modality.
#   acc (BLOCK_M, BLOCK_D) fp32, m_i / l_i (BLOCK_M,) fp32 running max (base 2) and sum; q (BLOCK_M, BLOCK_D)
#   Kh, Vh pointers to k[0, h], v[0, h]; qk_scale = scale * log2(e)
@triton.jit
def _fwd_keys(acc, m_i, l_i, q, q_pos, q_mask, Kh, Vh, TableH, k_row0, k_len,
              stride_kt, stride_vt, stride_tr, qk_scale, window, l0, nrd, num_rows,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
              Q_TEXT: tl.constexpr, K_TEXT: tl.constexpr, BLOCK_N: tl.constexpr):
    for start in range(0, k_len, BLOCK_N):
        k_pos = start + tl.arange(0, BLOCK_N)
        k_mask = k_pos < k_len
        rows = (k_row0 + k_pos).to(tl.int64)
        k = load_rows(Kh, rows, k_mask, stride_kt, HEAD_DIM, BLOCK_D)
        v = load_rows(Vh, rows, k_mask, stride_vt, HEAD_DIM, BLOCK_D)
        # "ieee" matters only for fp32 inputs (no silent TF32); half inputs take the tensor cores either way
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # (BLOCK_M, BLOCK_N), base-2 logits
        if HAS_BIAS:
            s += bias(TableH, q_pos[:, None], k_pos[None, :], q_mask[:, None] & k_mask[None, :], stride_tr,
                      window, l0, nrd, num_rows, Q_TEXT, K_TEXT) * LOG2E
        s = tl.where(k_mask[None, :], s, float("-inf"))
        # every tile holds at least one real key, so m_new is finite and alpha never sees inf - inf
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    return acc, m_i, l_i


# _fwd_kernel: grid (P * (query tiles of the longest text + of the longest image), H).
#   Q, K, V      (T, H, dh) fp32/fp16/bf16 (one dtype), last dim contiguous, rows/heads strided (qkv slices)
#   Out          (T, H, dh) q.dtype, contiguous;  Lse (T, H) fp32: log2-sum-exp2 of each row's base-2 logits
#   Table        (R, H) slice of the bias table (column stride 1), or a dummy when not HAS_BIAS
#   TextStart, TextQLen, TextKLen, ImageStart, ImageLen   (P,) int32: the PackedLayout
@triton.autotune(configs=query_configs(), key=["BLOCK_D", "HAS_BIAS"], do_bench=bench_fn(),
                 prune_configs_by={"early_config_prune": prune_query_configs})
@triton.jit
def _fwd_kernel(Q, K, V, Out, Lse, Table, TextStart, TextQLen, TextKLen, ImageStart, ImageLen,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                stride_tr, num_heads, max_text_q, max_image, qk_scale, window, l0, nrd, num_rows,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pair, q_text, pos0, seg_start, seg_len = segment_tile(TextStart, TextQLen, ImageStart, ImageLen, max_text_q,
                                                          max_image, BLOCK_M)
    if pos0 >= seg_len:
        return
    h = tl.program_id(1)
    t_start = tl.load(TextStart + pair)
    t_klen = tl.load(TextKLen + pair)
    i_start = tl.load(ImageStart + pair)
    i_len = tl.load(ImageLen + pair)
    q_pos = pos0 + tl.arange(0, BLOCK_M)
    q_mask = q_pos < seg_len
    rows = (seg_start + q_pos).to(tl.int64)
    q = load_rows(Q + h * stride_qh, rows, q_mask, stride_qt, HEAD_DIM, BLOCK_D)
    Kh = K + h * stride_kh
    Vh = V + h * stride_vh
    TableH = Table + h
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if q_text:
        acc, m_i, l_i = _fwd_keys(acc, m_i, l_i, q, q_pos, q_mask, Kh, Vh, TableH, t_start, t_klen, stride_kt,
                                  stride_vt, stride_tr, qk_scale, window, l0, nrd, num_rows,
                                  HEAD_DIM, BLOCK_D, HAS_BIAS, True, True, BLOCK_N)
        acc, m_i, l_i = _fwd_keys(acc, m_i, l_i, q, q_pos, q_mask, Kh, Vh, TableH, i_start, i_len, stride_kt,
                                  stride_vt, stride_tr, qk_scale, window, l0, nrd, num_rows,
                                  HEAD_DIM, BLOCK_D, HAS_BIAS, True, False, BLOCK_N)
    else:
        acc, m_i, l_i = _fwd_keys(acc, m_i, l_i, q, q_pos, q_mask, Kh, Vh, TableH, t_start, t_klen, stride_kt,
                                  stride_vt, stride_tr, qk_scale, window, l0, nrd, num_rows,
                                  HEAD_DIM, BLOCK_D, HAS_BIAS, False, True, BLOCK_N)
        acc, m_i, l_i = _fwd_keys(acc, m_i, l_i, q, q_pos, q_mask, Kh, Vh, TableH, i_start, i_len, stride_kt,
                                  stride_vt, stride_tr, qk_scale, window, l0, nrd, num_rows,
                                  HEAD_DIM, BLOCK_D, HAS_BIAS, False, False, BLOCK_N)
    # a row without any key (an empty pair) gives 0 and lse = +inf, so the backward assigns it no weight
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    qd_mask = q_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(Out + h * stride_oh + rows[:, None] * stride_ot + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=qd_mask)
    tl.store(Lse + rows * num_heads + h, tl.where(empty, float("inf"), m_i + tl.log2(l_safe)), mask=q_mask)


# ----------------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------------
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, seg: tuple[Tensor, ...], table: Tensor | None,
                  max_text_q: int, max_image: int, window: int, l0: int, scale: float) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel: returns out (T, H, dh) in q.dtype and lse (T, H) fp32 (base 2).

    `seg` = (text_start, text_q_len, text_k_len, image_start, image_len), each (P,) int32; `table` the layer's
    (R, H) slice of the bias table (column stride 1) or None.
    """
    q, k, v = rows_major(q), rows_major(k), rows_major(v)
    T, H, dh = q.shape
    out = q.new_empty(T, H, dh)
    lse = q.new_empty(T, H, dtype=torch.float32)
    P = seg[0].shape[0]
    if T == 0 or P == 0:
        return out, lse
    nrd, R = geometry(table, window, l0)
    tab = head_columns(table) if table is not None else q.new_empty(1)  # never read without a bias

    def grid(meta):
        return (P * (triton.cdiv(max_text_q, meta["BLOCK_M"]) + triton.cdiv(max_image, meta["BLOCK_M"])), H)

    _fwd_kernel[grid](q, k, v, out, lse, tab, *seg, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                      v.stride(0), v.stride(1), out.stride(0), out.stride(1), tab.stride(0), H, max_text_q,
                      max_image, scale * 1.4426950408889634, window, l0, nrd, R,
                      HEAD_DIM=dh, BLOCK_D=block_d(dh), HAS_BIAS=table is not None)
    return out, lse


# ----------------------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile) and autograd
# ----------------------------------------------------------------------------------------------------------
_SEG = "Tensor text_start, Tensor text_q_len, Tensor text_k_len, Tensor image_start, Tensor image_len"
_GEOM = "SymInt max_text_q, SymInt max_image, int window, int l0, float scale"


@torch.library.custom_op("vlmo_fast::packed_attention_fwd", mutates_args=(),
                         schema=f"(Tensor q, Tensor k, Tensor v, {_SEG}, Tensor? table, {_GEOM}) -> (Tensor, Tensor)")
def _fwd_op(q, k, v, text_start, text_q_len, text_k_len, image_start, image_len, table, max_text_q, max_image,
            window, l0, scale):
    seg = (text_start, text_q_len, text_k_len, image_start, image_len)
    return attention_fwd(q, k, v, seg, table, max_text_q, max_image, window, l0, scale)


@_fwd_op.register_fake
def _fwd_fake(q, k, v, text_start, text_q_len, text_k_len, image_start, image_len, table, max_text_q, max_image,
              window, l0, scale):
    T, H, dh = q.shape
    return q.new_empty(T, H, dh), q.new_empty(T, H, dtype=torch.float32)


@torch.library.custom_op("vlmo_fast::packed_attention_bwd", mutates_args=(),
                         schema=f"(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, {_SEG}, "
                                f"Tensor? table, {_GEOM}) -> (Tensor, Tensor, Tensor, Tensor)")
def _bwd_op(dout, q, k, v, out, lse, text_start, text_q_len, text_k_len, image_start, image_len, table,
            max_text_q, max_image, window, l0, scale):
    seg = (text_start, text_q_len, text_k_len, image_start, image_len)
    return attention_bwd(dout, q, k, v, out, lse, seg, table, max_text_q, max_image, window, l0, scale)


@_bwd_op.register_fake
def _bwd_fake(dout, q, k, v, out, lse, text_start, text_q_len, text_k_len, image_start, image_len, table,
              max_text_q, max_image, window, l0, scale):
    dtable = q.new_empty(table.shape, dtype=torch.float32) if table is not None else q.new_empty(0)
    return q.new_empty(q.shape), q.new_empty(k.shape), q.new_empty(v.shape), dtable


def _setup_context(ctx, inputs, output):
    q, k, v, *seg, table, max_text_q, max_image, window, l0, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], *seg, table)
    ctx.geometry = (max_text_q, max_image, window, l0, scale)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, *seg, table = ctx.saved_tensors
    dq, dk, dv, dtable = _bwd_op(dout, q, k, v, out, lse, *seg, table, *ctx.geometry)
    dtable = dtable.to(table.dtype) if table is not None and ctx.needs_input_grad[8] else None
    return dq, dk, dv, None, None, None, None, None, dtable, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def packed_attention_triton(q: Tensor, k: Tensor, v: Tensor, layout: PackedLayout, table: Tensor | None = None,
                            col: int = 0, window: int = 1, l0: int = 196, scale: float | None = None,
                            upcast: bool = True) -> Tensor:
    """The Triton kernel with packed_attention_ref's signature and semantics: q, k, v (T, H, dh) -> (T, H, dh).

    `table` (R, C): the layer's bias in columns [col, col + H); its gradient lands only there.  Logits and
    softmax are always fp32 (upcast=False is not offered: it would only lose accuracy).
    """
    if not upcast:
        raise ValueError("packed_attention_triton always computes logits and softmax in fp32 (upcast=True)")
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one (T, H, dh) shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    cdt = compute_dtype(q)
    q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)  # under autocast the operands take its dtype, as a matmul's would
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"q, k, v must share one of fp32/fp16/bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    T, H, dh = q.shape
    if not 1 <= dh <= 128:
        raise ValueError(f"head dim {dh} outside 1..128")
    if T != layout.num_rows:
        raise ValueError(f"{T} rows but the layout has {layout.num_rows}")
    scale = dh ** -0.5 if scale is None else float(scale)
    if table is not None:
        if table.dim() != 2 or not 0 <= col <= table.shape[1] - H:
            raise ValueError(f"table {tuple(table.shape)} has no columns [{col}, {col + H})")
        if table.shape[0] != table_rows(window, l0):
            raise ValueError(f"table has {table.shape[0]} rows, window {window} and l0 {l0} need "
                             f"{table_rows(window, l0)}")
        if layout.max_text_q > l0 or layout.max_image > window * window + 1:
            raise ValueError(f"segments (text {layout.max_text_q}, image {layout.max_image}) exceed the table "
                             f"(text <= {l0}, image <= {window * window + 1})")
        table = table[:, col:col + H]
    out, _ = _fwd_op(q, k, v, layout.text_start, layout.text_q_len, layout.text_k_len, layout.image_start,
                     layout.image_len, table, layout.max_text_q, layout.max_image, window, l0, scale)
    return out
