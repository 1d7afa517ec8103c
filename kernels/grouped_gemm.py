"""Grouped GEMMs of the modality-expert FFN: every row group and expert of a layer in one launch per GEMM stage.

The packed layout gives each expert contiguous row groups (start, end, slot); `slot` names one of at most
MAX_SLOTS experts that own rows in this call.  The group table is a small int32 (G, 3) tensor on the device.

- `grouped_rows_gemm`: C[rows] = epilogue(A[rows] @ B_slot) for the forward fc1 (GELU epilogue), fc2 (residual
  epilogue) and the backward's activation gradients.  Row tiles never straddle two groups: tile i of the launch
  is found by scanning the group table for the group whose cumulative tile count covers i (the tile-to-problem
  map of a grouped GEMM, as CUTLASS's and megablocks' grouped GEMMs compute it on the device), so the table is
  independent of the tile size the autotuner picks.  The expert's weight is one of the pointer arguments
  B0..B3, chosen per program: the weights stay the model's separate parameters (no stacking copy per call) and
  keep the alignment Triton specialises pointer arguments on (a pointer loaded from a table would lose it).
- `grouped_weight_grad`: C[slot] (N, P) = sum over the rows of the slot's groups of A[r, :]^T B[r, :], and the
  bias gradient DBIAS[slot] (N,) = sum of A's rows, for the weight gradients of fc1 and fc2.  Each program owns
  one output tile of one slot and walks that slot's groups in table order, accumulating in fp32 registers and
  storing once: deterministic, no atomics, no zero fill.

Limits: at most MAX_SLOTS experts with rows per call (VLMo uses at most two per layer, three in tests); A, C and
the auxiliary operands are row-major with unit column stride.  fp32 operands use IEEE dot products (no TF32).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .tuning import bench_fn, pick_configs

MAX_SLOTS = 4
# Epilogues of the row GEMM.
EPI_NONE, EPI_GELU, EPI_RESIDUAL, EPI_DGELU = 0, 1, 2, 3


@triton.jit
def _row_tile(GROUPS, NUM_GROUPS, tile, BLOCK_M: tl.constexpr):
    """(first row, end of its group, slot) of the `tile`-th row tile; tiles are numbered group after group."""
    row0 = tile * 0
    row_end = tile * 0
    slot = tile * 0
    seen = tile * 0
    for g in range(0, NUM_GROUPS):
        start = tl.load(GROUPS + 3 * g)
        end = tl.load(GROUPS + 3 * g + 1)
        tiles = tl.cdiv(end - start, BLOCK_M)
        hit = (tile >= seen) & (tile < seen + tiles)
        row0 = tl.where(hit, start + (tile - seen) * BLOCK_M, row0)
        row_end = tl.where(hit, end, row_end)
        slot = tl.where(hit, tl.load(GROUPS + 3 * g + 2), slot)
        seen += tiles
    return row0, row_end, slot


@triton.jit
def _pick(slot, P0, P1, P2, P3):
    """The pointer argument of this slot (the arguments of unused slots repeat P0)."""
    p = P0
    if slot == 1:
        p = P1
    elif slot == 2:
        p = P2
    elif slot == 3:
        p = P3
    return p


# Hopper-sized tiles first; the pruning filter drops tiles far larger than the problem and those that break
# the sm_90 rules for the operands' dtype.
_ROW_TILES = [  # (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps)
    (128, 128, 64, 4, 8), (128, 64, 64, 4, 4), (64, 128, 64, 4, 8), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4),
    (32, 64, 64, 4, 4),
]
_ROW_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_stages=s, num_warps=w)
                for bm, bn, bk, s, w in _ROW_TILES]
# The interpreter runs one program at a time in numpy: one small row tile keeps tests quick and exercises
# groups both smaller and larger than a tile.
_ROW_INTERPRET = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 256, "BLOCK_K": 64}, num_warps=4, num_stages=1)]


def _fits_sm90(block_m: int, block_n: int, num_warps: int, itemsize: int, epilogue: int) -> bool:
    """The sm_90 rules, read from the resource table (python -m vlmo_fast.kernels.aot): bf16/fp16 tiles of at
    least 64 rows (32-row tiles compile to mma.sync, not wgmma); the GELU-derivative epilogue, whose extra
    (T, F) operand sits beside the accumulator, takes 64-row tiles of at most 32 accumulator values a thread
    (64 x 128 on four warps reaches 255 registers and spills with some Triton versions); fp32 (IEEE dots on
    the FMA units) keeps the accumulator within 64 x 64.  Every listed tile's pipelined operands fit the
    227 KB of shared memory."""
    if itemsize == 4:
        return block_m * block_n <= 64 * 64
    if epilogue == EPI_DGELU:
        return block_m == 64 and block_m * block_n <= 32 * 32 * num_warps
    return block_m >= 64


def _prune_row_configs(configs, named_args, **kwargs):
    if len(configs) == 1:
        return configs
    itemsize = named_args["A"].element_size()
    m_cap = max(32 if itemsize == 4 else 64, triton.next_power_of_2(named_args["M"]))
    n_cap = max(64, triton.next_power_of_2(named_args["N"]))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= m_cap and c.kwargs["BLOCK_N"] <= n_cap
            and _fits_sm90(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, itemsize,
                           kwargs.get("EPILOGUE", EPI_NONE))]
    return kept or configs[-1:]


# C[rows] = epilogue(A[rows] @ B_slot) over every group of the table in one launch; grid (N tiles, row tiles).
#   A (T, K) row-major; B0..B3 (K, N) by strides (the weights or their transposes read in place), one per slot
#   BIAS0..BIAS3 (N,) per slot; C, AUX, X (T, N) row-major; GAMMA (N,), RSCALE (T,): any float dtype
#   GROUPS (NUM_GROUPS, 3) int32: start, end, slot of each non-empty group, in row order
#   M: the largest group's rows (prunes tiles), M_BUCKET its bit length (an autotune key)
#   EPI_NONE     C = acc
#   EPI_GELU     u = acc + BIAS[n]; AUX = u (if STORE_AUX); C = gelu_erf(u)
#   EPI_RESIDUAL h = acc + BIAS[n]; AUX = h (if STORE_AUX); C = X + RSCALE[m] * GAMMA[n] * h
#   EPI_DGELU    C = acc * gelu_erf'(AUX)                  (AUX holds u)
@triton.autotune(configs=pick_configs(_ROW_CONFIGS, _ROW_INTERPRET), do_bench=bench_fn(),
                 key=["N", "K", "M_BUCKET", "EPILOGUE", "STORE_AUX"],
                 prune_configs_by={"early_config_prune": _prune_row_configs})
@triton.jit
def _rows_gemm_kernel(A, B0, B1, B2, B3, BIAS0, BIAS1, BIAS2, BIAS3, C, AUX, X, GAMMA, RSCALE, GROUPS,
                      NUM_GROUPS, M, N, K, M_BUCKET,
                      stride_am, stride_bk, stride_bn, stride_cm, stride_auxm, stride_xm,
                      EPILOGUE: tl.constexpr, STORE_AUX: tl.constexpr, HAS_GAMMA: tl.constexpr,
                      HAS_RSCALE: tl.constexpr, IEEE: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # N tiles vary fastest: consecutive programs share the A row tile while it is in L2 (the weights fit in L2).
    pid_n = tl.program_id(0)
    row0, row_end, slot = _row_tile(GROUPS, NUM_GROUPS, tl.program_id(1), BLOCK_M)
    B = _pick(slot, B0, B1, B2, B3)

    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < row_end
    mask_n = offs_n < N
    m64 = offs_m.to(tl.int64)
    n64 = offs_n.to(tl.int64)
    a_ptrs = A + m64[:, None] * stride_am + offs_k[None, :]
    b_ptrs = B + offs_k[:, None].to(tl.int64) * stride_bk + n64[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk

    mask = mask_m[:, None] & mask_n[None, :]
    if EPILOGUE == 1:  # EPI_GELU
        bias = _pick(slot, BIAS0, BIAS1, BIAS2, BIAS3)
        u = acc + tl.load(bias + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if STORE_AUX:
            tl.store(AUX + m64[:, None] * stride_auxm + offs_n[None, :], u.to(AUX.dtype.element_ty), mask=mask)
        out = 0.5 * u * (1.0 + tl.erf(u * 0.7071067811865476))
    elif EPILOGUE == 2:  # EPI_RESIDUAL
        bias = _pick(slot, BIAS0, BIAS1, BIAS2, BIAS3)
        h = acc + tl.load(bias + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if STORE_AUX:
            tl.store(AUX + m64[:, None] * stride_auxm + offs_n[None, :], h.to(AUX.dtype.element_ty), mask=mask)
        if HAS_GAMMA:
            h = h * tl.load(GAMMA + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if HAS_RSCALE:
            h = h * tl.load(RSCALE + offs_m, mask=mask_m, other=0.0).to(tl.float32)[:, None]
        x = tl.load(X + m64[:, None] * stride_xm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        out = x + h
    elif EPILOGUE == 3:  # EPI_DGELU
        u = tl.load(AUX + m64[:, None] * stride_auxm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        dgelu = 0.5 * (1.0 + tl.erf(u * 0.7071067811865476)) + u * tl.exp(-0.5 * u * u) * 0.3989422804014327
        out = acc * dgelu
    else:
        out = acc
    tl.store(C + m64[:, None] * stride_cm + offs_n[None, :], out.to(C.dtype.element_ty), mask=mask)


_WGRAD_TILES = [  # (BLOCK_N, BLOCK_P, BLOCK_K (rows), num_stages, num_warps)
    (128, 128, 64, 3, 8), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4), (32, 64, 64, 4, 4),
]
_WGRAD_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_P": bp, "BLOCK_K": bk}, num_stages=s, num_warps=w)
                  for bn, bp, bk, s, w in _WGRAD_TILES]
_WGRAD_INTERPRET = [triton.Config({"BLOCK_N": 512, "BLOCK_P": 512, "BLOCK_K": 32}, num_warps=4, num_stages=1)]


def _prune_wgrad_configs(configs, named_args, **kwargs):
    if len(configs) == 1:
        return configs
    itemsize = named_args["A"].element_size()
    n_cap = max(64, triton.next_power_of_2(named_args["N"]))
    p_cap = max(64, triton.next_power_of_2(named_args["P"]))
    kept = [c for c in configs if c.kwargs["BLOCK_N"] <= n_cap and c.kwargs["BLOCK_P"] <= p_cap
            and _fits_sm90(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_P"], c.num_warps, itemsize, EPI_NONE)]
    return kept or configs[-1:]


# Weight and bias gradients of every slot in one launch; grid (N tiles x P tiles, slots).
#   A (T, N), B (T, P) row-major: the activation gradient and the layer's input rows
#   C (S, N, P) = per slot, A[rows]^T @ B[rows] over its groups in table order; DBIAS (S, N) = the row sums of
#   A (HAS_BIAS; written by the programs of the first P tile)
#   GROUPS, NUM_GROUPS as for the row GEMM; T_BUCKET (bit length of T) only keys the autotuner
@triton.autotune(configs=pick_configs(_WGRAD_CONFIGS, _WGRAD_INTERPRET), do_bench=bench_fn(),
                 key=["N", "P", "T_BUCKET", "HAS_BIAS"],
                 prune_configs_by={"early_config_prune": _prune_wgrad_configs})
@triton.jit
def _wgrad_kernel(A, B, C, DBIAS, GROUPS, NUM_GROUPS, N, P, T_BUCKET, stride_am, stride_bm,
                  HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    slot = tl.program_id(1)
    num_p = tl.cdiv(P, BLOCK_P)
    pid_n = pid // num_p
    pid_p = pid % num_p
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    mask_p = offs_p < P
    acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for g in range(0, NUM_GROUPS):
        start = tl.load(GROUPS + 3 * g)
        end = tl.load(GROUPS + 3 * g + 1)
        mine = tl.load(GROUPS + 3 * g + 2) == slot
        for k in range(0, tl.where(mine, tl.cdiv(end - start, BLOCK_K), 0)):
            rows = start + k * BLOCK_K + offs_k
            mask_k = rows < end
            r64 = rows.to(tl.int64)
            a = tl.load(A + r64[None, :] * stride_am + offs_n[:, None], mask=mask_n[:, None] & mask_k[None, :],
                        other=0.0)  # (BLOCK_N, BLOCK_K): A's rows, transposed
            b = tl.load(B + r64[:, None] * stride_bm + offs_p[None, :], mask=mask_k[:, None] & mask_p[None, :],
                        other=0.0)
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
            if HAS_BIAS:
                bias_acc += tl.sum(a.to(tl.float32), axis=1)
    slot64 = slot.to(tl.int64)
    c_ptrs = C + slot64 * N * P + offs_n[:, None].to(tl.int64) * P + offs_p[None, :]
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=mask_n[:, None] & mask_p[None, :])
    if HAS_BIAS:
        if pid_p == 0:
            tl.store(DBIAS + slot64 * N + offs_n, bias_acc.to(DBIAS.dtype.element_ty), mask=mask_n)


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------
def _slot_args(tensors: list[Tensor]) -> list[Tensor]:
    if not 1 <= len(tensors) <= MAX_SLOTS:
        raise ValueError(f"a grouped launch takes 1 to {MAX_SLOTS} experts with rows, got {len(tensors)}")
    return list(tensors) + [tensors[0]] * (MAX_SLOTS - len(tensors))


def grouped_rows_gemm(a: Tensor, bs: list[Tensor], groups: Tensor, group_rows: list[int], out: Tensor,
                      epilogue: int, biases: list[Tensor] | None = None, aux: Tensor | None = None,
                      store_aux: bool = False, x: Tensor | None = None, gamma: Tensor | None = None,
                      row_scale: Tensor | None = None) -> None:
    """out[rows] = epilogue(a[rows] @ bs[slot]) for every group of `groups` (int32 (G, 3) start, end, slot on
    a's device; `group_rows` its row counts on the host).  bs: one (K, N) matrix per slot, same shape and
    strides; a, out, aux and x row-major with unit column stride."""
    K, N = bs[0].shape
    for t in (a, out, aux, x):
        assert t is None or t.stride(-1) == 1, "row operands need unit column stride"
    assert all(b.shape == bs[0].shape and b.stride() == bs[0].stride() for b in bs), "slot weights differ"
    bias_args = _slot_args(biases if biases is not None else [out] * len(bs))
    largest = max(group_rows)
    args = (a, *_slot_args(bs), *bias_args, out, out if aux is None else aux, out if x is None else x,
            out if gamma is None else gamma, out if row_scale is None else row_scale, groups,
            len(group_rows), largest, N, K, largest.bit_length(), a.stride(0), bs[0].stride(0), bs[0].stride(1),
            out.stride(0), 0 if aux is None else aux.stride(0), 0 if x is None else x.stride(0))
    meta = dict(EPILOGUE=epilogue, STORE_AUX=store_aux, HAS_GAMMA=gamma is not None,
                HAS_RSCALE=row_scale is not None, IEEE=a.dtype == torch.float32)

    def grid(cfg):
        return (triton.cdiv(N, cfg["BLOCK_N"]), sum(triton.cdiv(r, cfg["BLOCK_M"]) for r in group_rows))

    _rows_gemm_kernel[grid](*args, **meta)


def grouped_weight_grad(a: Tensor, b: Tensor, groups: Tensor, num_slots: int, with_bias: bool
                        ) -> tuple[Tensor, Tensor | None]:
    """(dW (S, N, P), db (S, N) or None) in a's dtype: per slot, a[rows]^T @ b[rows] and the row sums of a over
    the slot's groups, accumulated in fp32 in table order.  a (T, N) and b (T, P) row-major."""
    T, N = a.shape
    P = b.shape[1]
    assert a.stride(-1) == 1 and b.stride(-1) == 1, "row operands need unit column stride"
    dw = a.new_empty(num_slots, N, P)
    db = a.new_empty(num_slots, N) if with_bias else None
    args = (a, b, dw, dw if db is None else db, groups, groups.shape[0], N, P, T.bit_length(), a.stride(0),
            b.stride(0))

    def grid(cfg):
        return (triton.cdiv(N, cfg["BLOCK_N"]) * triton.cdiv(P, cfg["BLOCK_P"]), num_slots)

    _wgrad_kernel[grid](*args, HAS_BIAS=with_bias, IEEE=a.dtype == torch.float32)
    return dw, db
