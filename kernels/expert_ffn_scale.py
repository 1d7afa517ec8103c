"""Backward of the FFN's output scaling, out = x + r * gamma * h, in one pass over the rows.

Writes dh = dy * gamma * r in the compute dtype (the A operand of the fc2 activation- and weight-gradient GEMMs)
and, with gamma, each program's partial sums of dy * h * r for gamma's gradient, reduced in torch in a fixed
order (deterministic).  As torch ops this is about six passes over (T, D) fp32 tensors; here it is one read of
dy and h and one write of dh.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


# DY (T, D) output gradient (x's dtype), row stride stride_dym; H (T, D) the fc2 output (compute dtype, HAS_GAMMA)
# GAMMA (D,), RSCALE (T,) any float dtype; DH (T, D) compute dtype, contiguous
# DGAMMA_PART (programs, D) fp32: this program's sums over its rows of dy * h * r (HAS_GAMMA)
@triton.jit
def _scale_bwd_kernel(DY, H, GAMMA, RSCALE, DH, DGAMMA_PART, T, D, stride_dym,
                      HAS_GAMMA: tl.constexpr, HAS_RSCALE: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask_m = rows < T
    mask_d = cols < D
    mask = mask_m[:, None] & mask_d[None, :]
    r64 = rows.to(tl.int64)[:, None]
    g = tl.load(DY + r64 * stride_dym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RSCALE:
        g = g * tl.load(RSCALE + rows, mask=mask_m, other=0.0).to(tl.float32)[:, None]
    if HAS_GAMMA:
        h = tl.load(H + r64 * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DGAMMA_PART + pid * D + cols, tl.sum(g * h, axis=0), mask=mask_d)
        g = g * tl.load(GAMMA + cols, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    tl.store(DH + r64 * D + cols[None, :], g.to(DH.dtype.element_ty), mask=mask)


def scale_bwd(dy: Tensor, h: Tensor, gamma: Tensor | None, row_scale: Tensor | None,
              dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """(dh (T, D) in `dtype`, gamma's gradient (D,) in gamma's dtype or None)."""
    T, D = dy.shape
    block_d = triton.next_power_of_2(D)
    block_m = max(1, min(16, 4096 // block_d))
    programs = triton.cdiv(T, block_m)
    dh = torch.empty(T, D, device=dy.device, dtype=dtype)
    part = torch.empty(programs if gamma is not None else 0, D, device=dy.device, dtype=torch.float32)
    assert dy.stride(-1) == 1 and (gamma is None or h.is_contiguous()), "rows need unit column stride"
    _scale_bwd_kernel[(programs,)](dy, h if gamma is not None else dy, dh if gamma is None else gamma,
                                   dh if row_scale is None else row_scale, dh, part, T, D, dy.stride(0),
                                   HAS_GAMMA=gamma is not None, HAS_RSCALE=row_scale is not None,
                                   BLOCK_M=block_m, BLOCK_D=block_d, num_warps=8 if block_d >= 1024 else 4)
    return dh, (None if gamma is None else part.sum(0).to(gamma.dtype))
