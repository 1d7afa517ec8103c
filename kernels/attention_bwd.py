"""Backward of packed attention (kernels/attention.py), FlashAttention-2 style.

Three launches: a preprocess computing delta = rowsum(dO * O); one program per (pair, key tile, head) that
walks every query of its pair and accumulates dk, dv and the bias gradient; one program per (pair, query tile,
head) that walks the pair's keys and accumulates dq.  Probabilities are recomputed from the saved base-2
log-sum-exp, so nothing of size (queries x keys) is stored.

The dk/dv program computes the transposed tiles (keys x queries: s^T = k q^T, p^T, dp^T = v dO^T, ds^T), as
Triton's fused-attention tutorial does: every matmul then has the owned key block as its M dimension, which
keeps it on Hopper's wgmma path while the walked query block stays small (32 rows) and the two (BLOCK_N, dh)
accumulators fit in registers.

The bias gradient is summed over pairs into a dense (H, M, M) fp32 buffer, M = longest text + longest image,
with one relaxed atomic add per (query, key): the bias of a (query slot, key slot) is the same for every pair,
so atomics collide only across pairs (relaxed: only the final sum is read, after the kernel).  A final
index_add folds the buffer into the (R, H) table columns.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .attention_tiles import (LOG2E, bias, block_d, geometry, head_columns, key_configs, load_rows,
                              prune_key_configs, prune_query_configs, query_configs, rows_major, segment_tile)
from .relpos import IMAGE, TEXT, relpos_index
from .tuning import bench_fn


# _delta_kernel: grid (cdiv(T, BLOCK_T), H).  DO (T, H, dh) strided rows/heads, Out (T, H, dh) contiguous,
# Delta (T, H) fp32 = sum_d dO * O.
@triton.jit
def _delta_kernel(DO, Out, Delta, num_rows, num_heads, stride_dt, stride_dh, stride_ot, stride_oh,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    h = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    r_mask = rows < num_rows
    rows64 = rows.to(tl.int64)
    do = load_rows(DO + h * stride_dh, rows64, r_mask, stride_dt, HEAD_DIM, BLOCK_D)
    o = load_rows(Out + h * stride_oh, rows64, r_mask, stride_ot, HEAD_DIM, BLOCK_D)
    tl.store(Delta + rows64 * num_heads + h, tl.sum(do.to(tl.float32) * o.to(tl.float32), 1), mask=r_mask)


# _dkdv_queries: for one key tile (k, v (BLOCK_N, BLOCK_D), positions k_pos), accumulate over the queries
# [q_row0, q_row0 + q_len) of one modality, in transposed tiles: dv += P^T dO, dk += dS^T q (unscaled), and
# dS^T into the bias buffer DBiasH (M, M) fp32 at (q_slot0 + q_pos, k_slot0 + k_pos).  Lse, Delta (T, H) fp32.
@triton.jit
def _dkdv_queries(dk, dv, k, v, k_pos, k_mask, Qh, DOh, Lse, Delta, TableH, DBiasH, h, q_row0, q_len,
                  q_slot0, k_slot0, num_slots, stride_qt, stride_dt, num_heads, stride_tr, qk_scale,
                  window, l0, nrd, num_rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  HAS_BIAS: tl.constexpr, Q_TEXT: tl.constexpr, K_TEXT: tl.constexpr, BLOCK_M: tl.constexpr):
    for start in range(0, q_len, BLOCK_M):
        q_pos = start + tl.arange(0, BLOCK_M)
        q_mask = q_pos < q_len
        rows = (q_row0 + q_pos).to(tl.int64)
        q = load_rows(Qh, rows, q_mask, stride_qt, HEAD_DIM, BLOCK_D)
        do = load_rows(DOh, rows, q_mask, stride_dt, HEAD_DIM, BLOCK_D)
        lse = tl.load(Lse + rows * num_heads + h, mask=q_mask, other=0.0)
        delta = tl.load(Delta + rows * num_heads + h, mask=q_mask, other=0.0)
        valid = k_mask[:, None] & q_mask[None, :]  # (BLOCK_N, BLOCK_M)
        s = tl.dot(k, tl.trans(q), input_precision="ieee") * qk_scale
        if HAS_BIAS:
            s += bias(TableH, q_pos[None, :], k_pos[:, None], valid, stride_tr, window, l0, nrd, num_rows,
                      Q_TEXT, K_TEXT) * LOG2E
        p = tl.where(valid, tl.exp2(s - lse[None, :]), 0.0)  # (BLOCK_N, BLOCK_M) fp32
        dv += tl.dot(p.to(do.dtype), do, input_precision="ieee")
        dp = tl.dot(v, tl.trans(do), input_precision="ieee")
        ds = p * (dp - delta[None, :])  # gradient of the natural-base logit, i.e. of the bias
        dk += tl.dot(ds.to(q.dtype), q, input_precision="ieee")
        if HAS_BIAS:
            slots = (k_slot0 + k_pos)[:, None] + (q_slot0 + q_pos)[None, :] * num_slots
            tl.atomic_add(DBiasH + slots, ds, mask=valid, sem="relaxed")
    return dk, dv


# _dkdv_kernel: grid (P * (key tiles of the longest text + of the longest image), H).
#   Q, K, V, DO (T, H, dh) strided rows/heads; DK, DV (T, H, dh) contiguous outputs (text rows beyond
#   text_k_len are not keys: the launcher zeroes them); DBias (H, M, M) fp32 zero-initialised, its own buffer
#   (a one-element dummy without a bias: the autotuner zeroes it between timed launches)
@triton.autotune(configs=key_configs(), key=["BLOCK_D", "HAS_BIAS"], reset_to_zero=["DBias"], do_bench=bench_fn(),
                 prune_configs_by={"early_config_prune": prune_key_configs})
@triton.jit
def _dkdv_kernel(Q, K, V, DO, Lse, Delta, DK, DV, Table, DBias, TextStart, TextQLen, TextKLen, ImageStart,
                 ImageLen, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh,
                 stride_gt, stride_gh, stride_tr, num_heads, max_text_q, max_image, qk_scale, scale, window, l0,
                 nrd, num_rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pair, k_text, pos0, seg_start, seg_len = segment_tile(TextStart, TextKLen, ImageStart, ImageLen, max_text_q,
                                                          max_image, BLOCK_N)
    if pos0 >= seg_len:
        return
    h = tl.program_id(1)
    t_start = tl.load(TextStart + pair)
    t_qlen = tl.load(TextQLen + pair)
    i_start = tl.load(ImageStart + pair)
    i_len = tl.load(ImageLen + pair)
    k_pos = pos0 + tl.arange(0, BLOCK_N)
    k_mask = k_pos < seg_len
    rows = (seg_start + k_pos).to(tl.int64)
    k = load_rows(K + h * stride_kh, rows, k_mask, stride_kt, HEAD_DIM, BLOCK_D)
    v = load_rows(V + h * stride_vh, rows, k_mask, stride_vt, HEAD_DIM, BLOCK_D)
    Qh = Q + h * stride_qh
    DOh = DO + h * stride_dh
    TableH = Table + h
    num_slots = max_text_q + max_image
    DBiasH = DBias + h.to(tl.int64) * num_slots * num_slots
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    k_slot0 = tl.where(k_text, 0, max_text_q)
    # text queries, then image queries (their slots start after the longest text)
    if k_text:
        dk, dv = _dkdv_queries(dk, dv, k, v, k_pos, k_mask, Qh, DOh, Lse, Delta, TableH, DBiasH, h, t_start,
                               t_qlen, 0, k_slot0, num_slots, stride_qt, stride_dt, num_heads, stride_tr,
                               qk_scale, window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS, True, True,
                               BLOCK_M)
        dk, dv = _dkdv_queries(dk, dv, k, v, k_pos, k_mask, Qh, DOh, Lse, Delta, TableH, DBiasH, h, i_start,
                               i_len, max_text_q, k_slot0, num_slots, stride_qt, stride_dt, num_heads, stride_tr,
                               qk_scale, window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS, False, True,
                               BLOCK_M)
    else:
        dk, dv = _dkdv_queries(dk, dv, k, v, k_pos, k_mask, Qh, DOh, Lse, Delta, TableH, DBiasH, h, t_start,
                               t_qlen, 0, k_slot0, num_slots, stride_qt, stride_dt, num_heads, stride_tr,
                               qk_scale, window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS, True, False,
                               BLOCK_M)
        dk, dv = _dkdv_queries(dk, dv, k, v, k_pos, k_mask, Qh, DOh, Lse, Delta, TableH, DBiasH, h, i_start,
                               i_len, max_text_q, k_slot0, num_slots, stride_qt, stride_dt, num_heads, stride_tr,
                               qk_scale, window, l0, nrd, num_rows, HEAD_DIM, BLOCK_D, HAS_BIAS, False, False,
                               BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kd_mask = k_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    out_off = h * stride_gh + rows[:, None] * stride_gt + offs_d[None, :]
    tl.store(DK + out_off, (dk * scale).to(DK.dtype.element_ty), mask=kd_mask)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=kd_mask)


# _dq_keys: for one query tile, accumulate dq += dS k (unscaled) over the keys [k_row0, k_row0 + k_len).
@triton.jit
def _dq_keys(dq, q, do, lse, delta, q_pos, q_mask, Kh, Vh, TableH, k_row0, k_len, stride_kt, stride_vt,
             stride_tr, qk_scale, window, l0, nrd, num_rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
             HAS_BIAS: tl.constexpr, Q_TEXT: tl.constexpr, K_TEXT: tl.constexpr, BLOCK_N: tl.constexpr):
    for start in range(0, k_len, BLOCK_N):
        k_pos = start + tl.arange(0, BLOCK_N)
        k_mask = k_pos < k_len
        rows = (k_row0 + k_pos).to(tl.int64)
        k = load_rows(Kh, rows, k_mask, stride_kt, HEAD_DIM, BLOCK_D)
        v = load_rows(Vh, rows, k_mask, stride_vt, HEAD_DIM, BLOCK_D)
        valid = q_mask[:, None] & k_mask[None, :]
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        if HAS_BIAS:
            s += bias(TableH, q_pos[:, None], k_pos[None, :], valid, stride_tr, window, l0, nrd, num_rows,
                      Q_TEXT, K_TEXT) * LOG2E
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
    return dq


# _dq_kernel: grid as the forward's.  DQ (T, H, dh) contiguous output.
@triton.autotune(configs=query_configs(), key=["BLOCK_D", "HAS_BIAS"], do_bench=bench_fn(),
                 prune_configs_by={"early_config_prune": prune_query_configs})
@triton.jit
def _dq_kernel(Q, K, V, DO, Lse, Delta, DQ, Table, TextStart, TextQLen, TextKLen, ImageStart, ImageLen,
               stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh,
               stride_gt, stride_gh, stride_tr, num_heads, max_text_q, max_image, qk_scale, scale, window, l0,
               nrd, num_rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
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
    do = load_rows(DO + h * stride_dh, rows, q_mask, stride_dt, HEAD_DIM, BLOCK_D)
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
    offs_d = tl.arange(0, BLOCK_D)
    qd_mask = q_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
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
    q, k, v, dout = rows_major(q), rows_major(k), rows_major(v), rows_major(dout)
    T, H, dh = q.shape
    P = seg[0].shape[0]
    # zeros: padded text rows are queries only, so no key program writes their dk, dv; every row is a query
    dq, dk, dv = q.new_empty(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
    M = max_text_q + max_image
    dbias = q.new_zeros(H, M, M, dtype=torch.float32) if table is not None else q.new_zeros(1, dtype=torch.float32)
    if T and P:
        delta = torch.empty_like(lse)
        BLOCK_D = block_d(dh)
        # 32 rows a program: 64 spilled 72 B on sm_90 at a head dim padded in registers (34 in 64, fp16)
        _delta_kernel[(triton.cdiv(T, 32), H)](dout, out, delta, T, H, dout.stride(0), dout.stride(1),
                                                out.stride(0), out.stride(1), HEAD_DIM=dh, BLOCK_D=BLOCK_D,
                                                BLOCK_T=32)
        nrd, R = geometry(table, window, l0)
        tab = head_columns(table) if table is not None else q.new_empty(1)  # never read without a bias
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
