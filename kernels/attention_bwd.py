"""Backward of packed attention (kernels/attention.py), FlashAttention-2 style, deterministic.

Three launches: a preprocess computing delta = rowsum(dO * O); dk/dv programs, each owning BLOCK_N key slots of
the dense per-pair form for a chunk of pairs, that walk every query of each pair in turn and accumulate dk, dv
and the bias gradient; dq programs (one per pair, query tile and head) that walk the pair's keys.
Probabilities are recomputed from the saved base-2 log-sum-exp, so nothing of size (queries x keys) is stored.
dq, dk and dv land in one (T, 3, H, dh) tensor, the gradient of the qkv projection's output.

The dk/dv program computes transposed tiles (keys x queries: s^T = k q^T, p^T, dp^T = v dO^T, ds^T), as
Triton's fused-attention tutorial does, so every matmul has the owned key block as its M dimension (wgmma).

The bias gradient: the bias of a (query slot, key slot) is the same for every pair, so its gradient is a sum
over pairs.  Program (chunk g, key-slot tile j, head h) owns columns j of partial buffer g: it adds each pair's
ds^T tile there with a plain load and store (pairs in a fixed order, a barrier between pairs), no atomics; the
G partial buffers are summed afterwards.  Bitwise reproducible, and the caller folds the (H, M, M) sum into the
table in a fixed order (vlmo_fast/ops/attention_bias.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .attention_tiles import (Problem, bias_tile, key_configs, launch, load_rows, pair_rows, pair_segments,
                              prune_key_configs, prune_query_configs, query_configs, query_tile, store_rows)
from .tuning import bench_fn

# Partial bias-gradient buffers take at most this many bytes (G = min(pairs, this / (H M M 4))).
PARTIAL_BYTES = 256 * 1024 * 1024


# _delta_kernel: grid (cdiv(T, BLOCK_T), H).  DO, Out (T, H, dh) contiguous, Delta (T, H) fp32 = sum_d dO * O.
@triton.jit
def _delta_kernel(DO, Out, Delta, num_rows, num_heads, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_T: tl.constexpr):
    h = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    r_mask = rows < num_rows
    rows64 = rows.to(tl.int64)
    stride = num_heads * HEAD_DIM
    do = load_rows(DO + h * HEAD_DIM, rows64, r_mask, stride, HEAD_DIM, BLOCK_D)
    o = load_rows(Out + h * HEAD_DIM, rows64, r_mask, stride, HEAD_DIM, BLOCK_D)
    tl.store(Delta + rows64 * num_heads + h, tl.sum(do.to(tl.float32) * o.to(tl.float32), 1), mask=r_mask)


# _dkdv_pair: one pair's contribution to a key-slot tile (k, v (BLOCK_N, BLOCK_D), slots k_slots): walks the pair's
# queries [text (t_qlen); image (i_len)] in transposed tiles; dv += P^T dO, dk += dS^T q (unscaled), and dS^T
# added into the bias-gradient columns at DBiasG (M, M) fp32 (this program's own columns of its chunk's buffer).
@triton.jit
def _dkdv_pair(dk, dv, k, v, k_slots, k_mask, Qh, DOh, Lse, Delta, BiasH, DBiasG, t_start, t_qlen, i_start,
               i_len, h, stride_t, stride_ot, num_heads, max_text, num_slots, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr):
    for start in range(0, t_qlen + i_len, BLOCK_M):
        q_rows, q_slots, q_mask = pair_rows(start + tl.arange(0, BLOCK_M), t_start, t_qlen, i_start, i_len,
                                            max_text)
        q = load_rows(Qh, q_rows, q_mask, stride_t, HEAD_DIM, BLOCK_D)
        do = load_rows(DOh, q_rows, q_mask, stride_ot, HEAD_DIM, BLOCK_D)
        lse = tl.load(Lse + q_rows * num_heads + h, mask=q_mask, other=0.0)
        delta = tl.load(Delta + q_rows * num_heads + h, mask=q_mask, other=0.0)
        valid = k_mask[:, None] & q_mask[None, :]  # (BLOCK_N, BLOCK_M)
        s = tl.dot(k, tl.trans(q), input_precision="ieee") * qk_scale
        if HAS_BIAS:
            s += bias_tile(BiasH, q_slots[None, :], k_slots[:, None], valid, num_slots)
        p = tl.where(valid, tl.exp2(s - lse[None, :]), 0.0)  # (BLOCK_N, BLOCK_M) fp32
        dv += tl.dot(p.to(do.dtype), do, input_precision="ieee")
        dp = tl.dot(v, tl.trans(do), input_precision="ieee")
        ds = p * (dp - delta[None, :])  # gradient of the natural-base logit, i.e. of the bias
        dk += tl.dot(ds.to(q.dtype), q, input_precision="ieee")
        if HAS_BIAS:
            ptr = DBiasG + q_slots[None, :] * num_slots + k_slots[:, None]
            tl.store(ptr, tl.load(ptr, mask=valid, other=0.0) + ds, mask=valid)
    return dk, dv


# _dkdv_kernel: grid (G * cdiv(M, BLOCK_N), H): program (chunk g, slot tile j, head h) handles pairs g, g + G, ...
#   DO (T, H, dh) contiguous; DQKV (T, 3, H, dh) output, strides as QKV's: this kernel writes [:, 1] and [:, 2]
#   of every row (padded text rows, queries only, get zeros); DBias (G, H, M, M) fp32 zero-initialised (a
#   one-element dummy without a bias: the autotuner zeroes it between timed launches)
@triton.autotune(configs=key_configs(), key=["BLOCK_D", "HAS_BIAS", "len_bucket"], reset_to_zero=["DBias"],
                 do_bench=bench_fn(), prune_configs_by={"early_config_prune": prune_key_configs})
@triton.jit
def _dkdv_kernel(QKV, DO, Lse, Delta, DQKV, Bias, DBias, num_pairs, num_chunks, TextStart, TextQLen, TextKLen,
                 ImageStart, ImageLen, stride_t, stride_c, stride_h, stride_ot, stride_oh, num_heads, max_text,
                 num_slots, qk_scale, scale, len_bucket, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    tiles = tl.cdiv(num_slots, BLOCK_N)
    chunk = tl.program_id(0) // tiles
    h = tl.program_id(1)
    k_slots = (tl.program_id(0) % tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_text = k_slots < max_text
    Qh = QKV + h * stride_h
    DOh = DO + h * stride_oh
    BiasH = Bias + h.to(tl.int64) * num_slots * num_slots
    DBiasG = DBias + (chunk * num_heads + h).to(tl.int64) * num_slots * num_slots
    for pair in range(chunk, num_pairs, num_chunks):
        t_start, t_qlen, t_klen, i_start, i_len = pair_segments(pair, TextStart, TextQLen, TextKLen, ImageStart,
                                                                ImageLen)
        k_rows = tl.where(k_text, t_start + k_slots, i_start + k_slots - max_text).to(tl.int64)
        k_mask = tl.where(k_text, k_slots < t_klen, (k_slots - max_text < i_len) & (k_slots < num_slots))
        row_mask = tl.where(k_text, k_slots < t_qlen, (k_slots - max_text < i_len) & (k_slots < num_slots))
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        if tl.max(k_mask.to(tl.int32), 0) > 0:  # a tile without this pair's keys computes nothing
            k = load_rows(Qh + stride_c, k_rows, k_mask, stride_t, HEAD_DIM, BLOCK_D)
            v = load_rows(Qh + 2 * stride_c, k_rows, k_mask, stride_t, HEAD_DIM, BLOCK_D)
            dk, dv = _dkdv_pair(dk, dv, k, v, k_slots, k_mask, Qh, DOh, Lse, Delta, BiasH, DBiasG, t_start, t_qlen,
                                i_start, i_len, h, stride_t, stride_ot, num_heads, max_text, num_slots, qk_scale,
                                HEAD_DIM, BLOCK_D, HAS_BIAS, BLOCK_M)
        # the next pair may add into the same bias-gradient entries from other threads of this program
        tl.debug_barrier()
        store_rows(DQKV + stride_c + h * stride_h, k_rows, row_mask, stride_t, dk * scale, HEAD_DIM, BLOCK_D)
        store_rows(DQKV + 2 * stride_c + h * stride_h, k_rows, row_mask, stride_t, dv, HEAD_DIM, BLOCK_D)


# _dq_kernel: grid as the forward's; writes DQKV[:, 0] of the owned query rows.
@triton.autotune(configs=query_configs(), key=["BLOCK_D", "HAS_BIAS", "len_bucket"], do_bench=bench_fn(),
                 prune_configs_by={"early_config_prune": prune_query_configs})
@triton.jit
def _dq_kernel(QKV, DO, Lse, Delta, DQKV, Bias, TextStart, TextQLen, TextKLen, ImageStart, ImageLen,
               stride_t, stride_c, stride_h, stride_ot, stride_oh, num_heads, max_text, num_slots, qk_scale, scale,
               len_bucket, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pair, t_start, t_klen, i_start, i_len, q_rows, q_slots, q_mask, live = query_tile(
        TextStart, TextQLen, TextKLen, ImageStart, ImageLen, max_text, num_slots, BLOCK_M)
    if not live:
        return
    h = tl.program_id(1)
    Qh = QKV + h * stride_h
    q = load_rows(Qh, q_rows, q_mask, stride_t, HEAD_DIM, BLOCK_D)
    do = load_rows(DO + h * stride_oh, q_rows, q_mask, stride_ot, HEAD_DIM, BLOCK_D)
    lse = tl.load(Lse + q_rows * num_heads + h, mask=q_mask, other=0.0)
    delta = tl.load(Delta + q_rows * num_heads + h, mask=q_mask, other=0.0)
    BiasH = Bias + h.to(tl.int64) * num_slots * num_slots
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, t_klen + i_len, BLOCK_N):
        k_rows, k_slots, k_mask = pair_rows(start + tl.arange(0, BLOCK_N), t_start, t_klen, i_start, i_len,
                                            max_text)
        k = load_rows(Qh + stride_c, k_rows, k_mask, stride_t, HEAD_DIM, BLOCK_D)
        v = load_rows(Qh + 2 * stride_c, k_rows, k_mask, stride_t, HEAD_DIM, BLOCK_D)
        valid = q_mask[:, None] & k_mask[None, :]
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        if HAS_BIAS:
            s += bias_tile(BiasH, q_slots[:, None], k_slots[None, :], valid, num_slots)
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
    store_rows(DQKV + h * stride_h, q_rows, q_mask, stride_t, dq * scale, HEAD_DIM, BLOCK_D)


def num_chunks(problem: Problem) -> int:
    """G: how many partial bias-gradient buffers (each program adds the pairs of one chunk into its own)."""
    if problem.bias is None:
        return problem.num_pairs
    H, M = problem.qkv.shape[2], problem.num_slots
    return max(1, min(problem.num_pairs, PARTIAL_BYTES // (H * M * M * 4)))


def attention_bwd(problem: Problem, dout: Tensor, out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """Launch the backward: dqkv (T, 3, H, dh) in qkv's dtype and dbias (H, M, M) fp32 summed over pairs (empty
    without a bias).  `out`, `lse` the forward's outputs, `dout` the output's gradient."""
    qkv = problem.qkv
    T, _, H, dh = qkv.shape
    M = problem.num_slots
    dout, out = dout.contiguous(), out.contiguous()
    dqkv = qkv.new_empty(qkv.shape)  # qkv is contiguous (Problem): same strides
    G = num_chunks(problem)
    has_bias = problem.bias is not None
    dbias = qkv.new_zeros((G, H, M, M) if has_bias else (1,), dtype=torch.float32)
    if not (T and problem.num_pairs):
        return dqkv.zero_(), (dbias.sum(0) if has_bias else qkv.new_empty(0))
    delta = torch.empty_like(lse)
    meta = problem.meta()
    _delta_kernel[(triton.cdiv(T, 32), H)](dout, out, delta, T, H, HEAD_DIM=dh, BLOCK_D=meta["BLOCK_D"], BLOCK_T=32)
    bias = problem.bias if has_bias else qkv.new_empty(1)  # never read without a bias
    launch(_dkdv_kernel, problem, (qkv, dout, lse, delta, dqkv, bias, dbias, problem.num_pairs, G), "BLOCK_N", G)
    launch(_dq_kernel, problem, (qkv, dout, lse, delta, dqkv, bias), "BLOCK_M")
    return dqkv, (dbias.sum(0) if has_bias else qkv.new_empty(0))
