"""The experts' LayerNorms over every row group of a layer, forward and backward, one launch each.

Each program normalises BLOCK_M rows of one group with that group's expert weights (row tiles never straddle
two groups; the tile's group comes from the same on-device scan of the group table as the grouped GEMMs).
The backward also adds the gradient that reaches x through the residual, and writes each program's partial
sums of the norm weight and bias gradients; `reduce_partials` sums them per slot in a fixed order.

Why the LayerNorm is its own pass and not the fc1 GEMM's prologue: normalising the A operand inside the fc1
mainloop redoes it for each of the F / BLOCK_N column tiles (24 at base width with 128-wide tiles), reads x in
fp32 (twice the bytes of the bf16 operand) and takes A off the asynchronous copy path that feeds wgmma from
shared memory; and the backward needs xn for the fc1 weight gradient anyway.  The pass moves about 6 bytes
per element (fp32 x in, bf16 xn out): at VLMo-base shapes (T = 64 x 211, D = 768) about 65 MB, ~20 us at
H100/H200 bandwidth against ~200 us for the layer's two bf16 GEMMs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .grouped_gemm import _pick, _row_tile, _slot_args


# Forward.  X (T, D) rows of stride stride_xm; W0..W3, B0..B3 (D,) norm weight and bias per slot;
# Y (T, D) the normalised rows xn (stride stride_ym, the compute dtype); MEAN, RSTD (T,) fp32;
# GROUPS (NUM_GROUPS, 3) int32 start, end, slot.  Grid: one program per row tile of every group.
@triton.jit
def _ln_fwd_kernel(X, W0, W1, W2, W3, B0, B1, B2, B3, Y, MEAN, RSTD, GROUPS, NUM_GROUPS, D, stride_xm, stride_ym,
                   eps, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    row0, row_end, slot = _row_tile(GROUPS, NUM_GROUPS, tl.program_id(0), BLOCK_M)
    W = _pick(slot, W0, W1, W2, W3)
    B = _pick(slot, B0, B1, B2, B3)
    rows = row0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask_m = rows < row_end
    mask = mask_m[:, None] & (cols < D)[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(X + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=cols < D, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + rows64[:, None] * stride_ym + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=mask_m)
    tl.store(RSTD + rows, rstd, mask=mask_m)


# Backward plus the residual gradient.  DXN (T, D) gradient of xn; X (T, D); W0..W3 (D,) per slot;
# MEAN, RSTD (T,) fp32; DRES (T, D) gradient reaching x through the residual; DX (T, D) = DRES + LayerNorm
# backward of DXN; DW_PART, DB_PART (programs, D) fp32: this program's sums of DXN * xhat and of DXN.
@triton.jit
def _ln_bwd_kernel(DXN, X, W0, W1, W2, W3, MEAN, RSTD, DRES, DX, DW_PART, DB_PART, GROUPS, NUM_GROUPS, D,
                   stride_dxnm, stride_xm, stride_dresm, stride_dxm,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    row0, row_end, slot = _row_tile(GROUPS, NUM_GROUPS, pid, BLOCK_M)
    W = _pick(slot, W0, W1, W2, W3)
    rows = row0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask_m = rows < row_end
    mask_d = cols < D
    mask = mask_m[:, None] & mask_d[None, :]
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(X + r64 * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = tl.load(DXN + r64 * stride_dxnm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(MEAN + rows, mask=mask_m, other=0.0)
    rstd = tl.load(RSTD + rows, mask=mask_m, other=0.0)
    w = tl.load(W + cols, mask=mask_d, other=0.0).to(tl.float32)
    xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    wg = g * w[None, :]
    c1 = tl.sum(xhat * wg, axis=1) / D
    c2 = tl.sum(wg, axis=1) / D
    dres = tl.load(DRES + r64 * stride_dresm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dx = (wg - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None] + dres
    tl.store(DX + r64 * stride_dxm + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PART + pid * D + cols, tl.sum(g * xhat, axis=0), mask=mask_d)
    tl.store(DB_PART + pid * D + cols, tl.sum(g, axis=0), mask=mask_d)


def ln_rows(D: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps) of the LayerNorm kernels: about 4096 elements per program."""
    block_d = triton.next_power_of_2(D)
    return max(1, min(16, 4096 // block_d)), block_d, 8 if block_d >= 1024 else 4


def grouped_layer_norm(x: Tensor, ws: list[Tensor], bs: list[Tensor], groups: Tensor, group_rows: list[int],
                       out: Tensor, mean: Tensor, rstd: Tensor, eps: float) -> None:
    """out = LayerNorm of each group's rows of x with its slot's (ws, bs); mean and rstd (T,) fp32."""
    D = x.shape[1]
    block_m, block_d, warps = ln_rows(D)
    programs = sum(triton.cdiv(r, block_m) for r in group_rows)
    _ln_fwd_kernel[(programs,)](x, *_slot_args(ws), *_slot_args(bs), out, mean, rstd, groups, len(group_rows), D,
                                x.stride(0), out.stride(0), eps, BLOCK_M=block_m, BLOCK_D=block_d,
                                num_warps=warps)


def grouped_layer_norm_bwd(dxn: Tensor, x: Tensor, ws: list[Tensor], mean: Tensor, rstd: Tensor, dres: Tensor,
                           dx: Tensor, groups: Tensor, group_rows: list[int]) -> tuple[Tensor, Tensor]:
    """Writes dx = dres + LayerNorm backward of dxn; returns the fp32 per-program partial sums (programs, D) of
    the norm weight and bias gradients (programs numbered group after group, `ln_rows(D)[0]` rows each)."""
    D = x.shape[1]
    block_m, block_d, warps = ln_rows(D)
    programs = sum(triton.cdiv(r, block_m) for r in group_rows)
    dw = torch.empty(programs, D, device=x.device, dtype=torch.float32)
    db = torch.empty_like(dw)
    _ln_bwd_kernel[(programs,)](dxn, x, *_slot_args(ws), mean, rstd, dres, dx, dw, db, groups, len(group_rows), D,
                                dxn.stride(0), x.stride(0), dres.stride(0), dx.stride(0),
                                BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps)
    return dw, db


def reduce_partials(parts: Tensor, group_rows: list[int], group_slots: list[int], num_slots: int,
                    block_m: int) -> list[Tensor]:
    """Per slot, the sum of the partial rows of its groups' programs, in group order (deterministic)."""
    pieces: list[list[Tensor]] = [[] for _ in range(num_slots)]
    first = 0
    for rows, slot in zip(group_rows, group_slots):
        n = triton.cdiv(rows, block_m)
        pieces[slot].append(parts[first:first + n])
        first += n
    return [torch.cat(p).sum(0) for p in pieces]
