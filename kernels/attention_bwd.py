"""Backward of packed attention (kernels/attention.py), flash-attention 2 style.

Three launches: a preprocess computing delta = rowsum(dO * O); one program per (pair, key tile, head) that
walks every query of its pair and accumulates dk, dv and the bias gradient; one program per (pair, query tile,
head) that walks the pair's keys and accumulates dq.  Probabilities are recomputed from the saved base-2
log-sum-exp, so nothing of size (queries x keys) is stored.

The bias gradient is summed over pairs into a dense (H, M, M) fp32 buffer, M = longest text + longest image,
with one atomic add per (query, key): the bias of a (query slot, key slot) is the same for every pair, so
atomics collide only across pairs, whereas adding straight into the table would make the whole tile hit a few
rows (a text x image block reads one row).  A final index_add folds the buffer into the (R, H) table columns.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from vlmo_fast.ops.relpos import IMAGE, TEXT, relpos_index

from .attention import _AUTOTUNE, _LOG2E, _bias, _block_d, _geometry, _head_columns, _rows_major


# _delta_kernel: grid (cdiv(T, BLOCK_T), H).  DO (T, H, dh) strided rows/heads, Out (T, H, dh) contiguous,
# Delta (T, H) fp32 = sum_d dO * O.
@triton.jit
def _delta_kernel(DO, Out, Delta, num_rows, num_heads, stride_dt, stride_dh, stride_ot, stride_oh,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    h = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    r_mask = rows < num_rows
    mask = r_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    rows64 = rows.to(tl.int64)
    do = tl.load(DO + h * stride_dh + rows64[:, None] * stride_dt + offs_d[None, :], mask=mask, other=0.0)
    o = tl.load(Out + h * stride_oh + rows64[:, None] * stride_ot + offs_d[None, :], mask=mask, other=0.0)
    tl.store(Delta + rows64 * num_heads + h, tl.sum(do.to(tl.float32) * o.to(tl.float32), 1), mask=r_mask)


# _dkdv_queries: for one key tile (k, v (BLOCK_N, BLOCK_D), positions k_pos), accumulate over the queries
# [q_row0, q_row0 + q_len) of one modality: dv += P^T dO, dk += dS^T q (unscaled), and dS into the bias buffer
# DBiasH (M, M) fp32 at (q_slot0 + q_pos, k_slot0 + k_pos).  Lse, Delta (T, H) fp32.
@triton.jit
def _dkdv_queries(dk, dv, k, v, k_pos, k_mask, Qh, DOh, Lse, Delta, TableH, DBiasH, h, q_row0, q_len,
                  q_slot0, k_slot0, num_slots, stride_qt, stride_dt, num_heads, stride_tr, qk_scale,
                  window, l0, nrd, num_rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  HAS_BIAS: tl.constexpr, Q_TEXT: tl.constexpr, K_TEXT: tl.constexpr, BLOCK_M: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    for start in range(0, q_len, BLOCK_M):
        q_pos = start + tl.arange(0, BLOCK_M)
        q_mask = q_pos < q_len
        rows = (q_row0 + q_pos).to(tl.int64)
        qd_mask = q_mask[:, None] & d_mask[None, :]
        q = tl.load(Qh + rows[:, None] * stride_qt + offs_d[None, :], mask=qd_mask, other=0.0)
        do = tl.load(DOh + rows[:, None] * stride_dt + offs_d[None, :], mask=qd_mask, other=0.0)
        lse = tl.load(Lse + rows * num_heads + h, mask=q_mask, other=0.0)
        delta = tl.load(Delta + rows * num_heads + h, mask=q_mask, other=0.0)
        valid = q_mask[:, None] & k_mask[None, :]
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        if HAS_BIAS:
            s += _bias(TableH, q_pos, k_pos, valid, stride_tr, window, l0, nrd, num_rows, Q_TEXT, K_TEXT) * _LOG2E
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)  # (BLOCK_M, BLOCK_N) fp32
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision="ieee")
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])  # gradient of the natural-base logit, i.e. of the bias
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee")
        if HAS_BIAS:
            slots = (q_slot0 + q_pos)[:, None] * num_slots + (k_slot0 + k_pos)[None, :]
            tl.atomic_add(DBiasH + slots, ds, mask=valid)
    return dk, dv


# _dkdv_kernel: grid (P * (key tiles of the longest text + of the longest image), H).
#   Q, K, V, DO (T, H, dh) strided rows/heads; DK, DV (T, H, dh) contiguous outputs (text rows beyond
#   text_k_len are not keys: the launcher zeroes them); DBias (H, M, M) fp32 zero-initialised
@triton.autotune(**_AUTOTUNE, reset_to_zero=["DBias"])
@triton.jit
def _dkdv_kernel(Q, K, V, DO, Lse, Delta, DK, DV, Table, DBias, TextStart, TextQLen, TextKLen, ImageStart,
                 ImageLen, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh,
                 stride_gt, stride_gh, stride_tr, num_heads, max_text_q, max_image, qk_scale, scale, window, l0,
                 nrd, num_rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    n_text = tl.cdiv(max_text_q, BLOCK_N)
    per_pair = n_text + tl.cdiv(max_image, BLOCK_N)
    pair = tl.program_id(0) // per_pair
    tile = tl.program_id(0) % per_pair
    h = tl.program_id(1)
    t_start = tl.load(TextStart + pair)
    t_qlen = tl.load(TextQLen + pair)
    i_start = tl.load(ImageStart + pair)
    i_len = tl.load(ImageLen + pair)
    k_text = tile < n_text
    pos0 = tl.where(k_text, tile, tile - n_text) * BLOCK_N
    seg_start = tl.where(k_text, t_start, i_start)
    seg_len = tl.where(k_text, tl.load(TextKLen + pair), i_len)
    if pos0 >= seg_len:
        return
    k_pos = pos0 + tl.arange(0, BLOCK_N)
    k_mask = k_pos < seg_len
    rows = (seg_start + k_pos).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    kd_mask = k_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = tl.load(K + h * stride_kh + rows[:, None] * stride_kt + offs_d[None, :], mask=kd_mask, other=0.0)
    v = tl.load(V + h * stride_vh + rows[:, None] * stride_vt + offs_d[None, :], mask=kd_mask, other=0.0)
    Qh = Q + h * stride_qh
    DOh = DO + h * stride_dh
    TableH = Table + h
    num_slots = max_text_q + max_image
    DBiasH = DBias + h.to(tl.int64) * num_slots * num_slots
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if k_text:
        dk, dv = _dkdv_queries(dk, dv, k, v, k_pos, k_mask, Qh, DOh, Lse, Delta, TableH, DBiasH, h, t_start,
                               t_qlen, 0, 0, num_slots, stride_qt, stride_dt, num_heads, stride_tr, qk_scale,
                               window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS, True, True, BLOCK_M)
        dk, dv = _dkdv_queries(dk, dv, k, v, k_pos, k_mask, Qh, DOh, Lse, Delta, TableH, DBiasH, h, i_start,
                               i_len, max_text_q, 0, num_slots, stride_qt, stride_dt, num_heads, stride_tr,
                               qk_scale, window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS, False, True,
                               BLOCK_M)
    else:
        dk, dv = _dkdv_queries(dk, dv, k, v, k_pos, k_mask, Qh, DOh, Lse, Delta, TableH, DBiasH, h, t_start,
                               t_qlen, 0, max_text_q, num_slots, stride_qt, stride_dt, num_heads, stride_tr,
                               qk_scale, window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS, True, False,
                               BLOCK_M)
        dk, dv = _dkdv_queries(dk, dv, k, v, k_pos, k_mask, Qh, DOh, Lse, Delta, TableH, DBiasH, h, i_start,
                               i_len, max_text_q, max_text_q, num_slots, stride_qt, stride_dt, num_heads,
                               stride_tr, qk_scale, window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS,
                               False, False, BLOCK_M)
    out_off = h * stride_gh + rows[:, None] * stride_gt + offs_d[None, :]
    tl.store(DK + out_off, (dk * scale).to(DK.dtype.element_ty), mask=kd_mask)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=kd_mask)


# _dq_keys: for one query tile, accumulate dq += dS k (unscaled) over the keys [k_row0, k_row0 + k_len).
@triton.jit
def _dq_keys(dq, q, do, lse, delta, q_pos, q_mask, Kh, Vh, TableH, k_row0, k_len, stride_kt, stride_vt,
             stride_tr, qk_scale, window, l0, nrd, num_rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
             HAS_BIAS: tl.constexpr, Q_TEXT: tl.constexpr, K_TEXT: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    for start in range(0, k_len, BLOCK_N):
        k_pos = start + tl.arange(0, BLOCK_N)
        k_mask = k_pos < k_len
        rows = (k_row0 + k_pos).to(tl.int64)
        kv_mask = k_mask[:, None] & d_mask[None, :]
        k = tl.load(Kh + rows[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(Vh + rows[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        valid = q_mask[:, None] & k_mask[None, :]
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        if HAS_BIAS:
            s += _bias(TableH, q_pos, k_pos, valid, stride_tr, window, l0, nrd, num_rows, Q_TEXT, K_TEXT) * _LOG2E
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
    return dq


# _dq_kernel: grid as the forward's.  DQ (T, H, dh) contiguous output.
@triton.autotune(**_AUTOTUNE)
@triton.jit
def _dq_kernel(Q, K, V, DO, Lse, Delta, DQ, Table, TextStart, TextQLen, TextKLen, ImageStart, ImageLen,
               stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh,
               stride_gt, stride_gh, stride_tr, num_heads, max_text_q, max_image, qk_scale, scale, window, l0,
               nrd, num_rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    n_text = tl.cdiv(max_text_q, BLOCK_M)
    per_pair = n_text + tl.cdiv(max_image, BLOCK_M)
    pair = tl.program_id(0) // per_pair
    tile = tl.program_id(0) % per_pair
    h = tl.program_id(1)
    t_start = tl.load(TextStart + pair)
    t_klen = tl.load(TextKLen + pair)
    i_start = tl.load(ImageStart + pair)
    i_len = tl.load(ImageLen + pair)
    q_text = tile < n_text
    pos0 = tl.where(q_text, tile, tile - n_text) * BLOCK_M
    seg_start = tl.where(q_text, t_start, i_start)
    seg_len = tl.where(q_text, tl.load(TextQLen + pair), i_len)
    if pos0 >= seg_len:
        return
    q_pos = pos0 + tl.arange(0, BLOCK_M)
    q_mask = q_pos < seg_len
    rows = (seg_start + q_pos).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    qd_mask = q_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(Q + h * stride_qh + rows[:, None] * stride_qt + offs_d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(DO + h * stride_dh + rows[:, None] * stride_dt + offs_d[None, :], mask=qd_mask, other=0.0)
    lse = tl.load(Lse + rows * num_heads + h, mask=q_mask, other=0.0)
    delta = tl.load(Delta + rows * num_heads + h, mask=q_mask, other=0.0)
    Kh = K + h * stride_kh
    Vh = V + h * stride_vh
    TableH = Table + h
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if q_text:
        dq = _dq_keys(dq, q, do, lse, delta, q_pos, q_mask, Kh, Vh, TableH, t_start, t_klen, stride_kt,
                      stride_vt, stride_tr, qk_scale, window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS,
                      True, True, BLOCK_N)
        dq = _dq_keys(dq, q, do, lse, delta, q_pos, q_mask, Kh, Vh, TableH, i_start, i_len, stride_kt,
                      stride_vt, stride_tr, qk_scale, window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS,
                      True, False, BLOCK_N)
    else:
        dq = _dq_keys(dq, q, do, lse, delta, q_pos, q_mask, Kh, Vh, TableH, t_start, t_klen, stride_kt,
                      stride_vt, stride_tr, qk_scale, window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS,
                      False, True, BLOCK_N)
        dq = _dq_keys(dq, q, do, lse, delta, q_pos, q_mask, Kh, Vh, TableH, i_start, i_len, stride_kt,
                      stride_vt, stride_tr, qk_scale, window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS,
                      False, False, BLOCK_N)
    tl.store(DQ + h * stride_gh + rows[:, None] * stride_gt + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=qd_mask)


def _slot_index(max_text_q: int, max_image: int, window: int, l0: int, device: torch.device) -> Tensor:
    """(M * M,) int64: the table row of every (query slot, key slot) of the dense bias buffer."""
    slot = torch.arange(max_text_q + max_image, device=device)
    mod = torch.where(slot < max_text_q, TEXT, IMAGE)
    pos = torch.where(slot < max_text_q, slot, slot - max_text_q)
    return relpos_index(mod[:, None], pos[:, None], mod[None, :], pos[None, :], window, l0).reshape(-1)


def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, seg: tuple[Tensor, ...],
                  table: Tensor | None, max_text_q: int, max_image: int, window: int, l0: int,
                  scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launch the backward: (dq, dk, dv) in the input dtypes, contiguous, and dtable (R, H) fp32 (empty when
    there is no table).  Arguments as attention_fwd's, plus its outputs out, lse and the gradient dout."""
    q, k, v, dout = _rows_major(q), _rows_major(k), _rows_major(v), _rows_major(dout)
    T, H, dh = q.shape
    P = seg[0].shape[0]
    # zeros: padded text rows are queries only, so no key program writes their dk, dv
    dq, dk, dv = q.new_empty(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
    M = max_text_q + max_image
    dbias = q.new_zeros(H, M, M, dtype=torch.float32) if table is not None else lse
    if T and P:
        delta = torch.empty_like(lse)
        BLOCK_D = _block_d(dh)
        _delta_kernel[(triton.cdiv(T, 64), H)](dout, out, delta, T, H, dout.stride(0), dout.stride(1),
                                                out.stride(0), out.stride(1), HEAD_DIM=dh, BLOCK_D=BLOCK_D,
                                                BLOCK_T=64)
        nrd, R = _geometry(table, window, l0)
        tab = _head_columns(table) if table is not None else lse
        common = (seg + (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                         dout.stride(0), dout.stride(1), dq.stride(0), dq.stride(1), tab.stride(0), H, max_text_q,
                         max_image, scale * 1.4426950408889634, scale, window, l0, nrd, R))
        meta = dict(HEAD_DIM=dh, BLOCK_D=BLOCK_D, HAS_BIAS=table is not None)

        def grid_k(m):
            return (P * (triton.cdiv(max_text_q, m["BLOCK_N"]) + triton.cdiv(max_image, m["BLOCK_N"])), H)

        def grid_q(m):
            return (P * (triton.cdiv(max_text_q, m["BLOCK_M"]) + triton.cdiv(max_image, m["BLOCK_M"])), H)

        _dkdv_kernel[grid_k](q, k, v, dout, lse, delta, dk, dv, tab, dbias, *common, **meta)
        _dq_kernel[grid_q](q, k, v, dout, lse, delta, dq, tab, *common, **meta)
    else:
        dq.zero_()
    if table is None:
        return dq, dk, dv, q.new_empty(0)
    dtable = torch.zeros(table.shape, device=q.device, dtype=torch.float32)
    dtable.index_add_(0, _slot_index(max_text_q, max_image, window, l0, q.device), dbias.reshape(H, M * M).t())
    return dq, dk, dv, dtable
