"""Modality-expert FFN over contiguous row groups.

For each group (start, end, e) of rows of x (T, D): x + r * gamma * fc2(gelu(fc1(layer_norm_e(x)))) with the
LayerNorm and MLP of expert e, gamma the block's layer scale (or none) and r an optional per-row scale
(stochastic depth).  In the packed layout every expert owns contiguous rows, so no gather or scatter is needed.

Why it is fast (forward, three kernels per non-empty group):
1. LayerNorm (Triton, memory bound): writes the normalised rows xn and the per-row mean and rstd.
2. fc1 GEMM (Triton) with bias + exact-erf GELU in its epilogue: writes the pre-activation u (kept for the
   backward) and a = gelu(u).  Without the fused epilogue a separate GELU pass over the (T, 4D) activations
   costs about half as much as the GEMM itself.
3. fc2 GEMM (Triton) with bias, layer scale, row scale and the residual add in its epilogue: writes the output
   rows (and the fc2 output h, needed only for gamma's gradient).
Backward: dh = dy * gamma * r (torch, (T, D) only), the da GEMM dh @ W2 in Triton with gelu'(u) fused into its
epilogue (again saving a (T, 4D) pass), the weight-gradient GEMMs and dxn = du @ W1 as cuBLAS matmuls (plain
GEMMs with nothing to fuse, where cuBLAS is at least as fast as a Triton GEMM), bias sums in torch, and the
LayerNorm backward plus the residual gradient in one Triton kernel (its weight gradients as per-program
partial sums reduced in torch).

Choices and limits:
- One launch per group, each with its own expert's weight pointers: the weights stay the model's separate
  parameters (no stacking copy per call) and a group needs no tile->group map.  VLMo has at most two groups per
  layer (text and image below s, one VL group above), each of hundreds to thousands of rows, so the second
  launch costs microseconds against milliseconds of GEMM.
- The LayerNorm is a separate pass rather than a GEMM prologue: applying it inside the fc1 mainloop would redo
  it for every column tile and take the A operand off the asynchronous shared-memory path of the tensor cores;
  the pass costs about 4*T*D bytes, a few percent of the FFN.
- Accumulation is fp32 in every kernel; fp32 inputs use IEEE dot products (no TF32).  The matmuls run in the
  compute dtype: the autocast dtype under torch.autocast, else x's dtype.  Weights are cast to it by the public
  function (a no-op when they match; autograd casts their gradients back); x, the residual and the output keep
  x's dtype (an fp32 residual stream stays fp32 while the GEMM operands are bf16), LayerNorm statistics fp32.
- Saved for the backward: xn (T, D), mean and rstd (T,), u and a (T, 4D), h (T, D) when gamma is given; the
  same activations the official eager code keeps.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .autocast import compute_dtype
from .tuning import bench_fn, pick_configs

# One expert's weights in the official layout: (norm weight, norm bias, fc1 weight (F, D), fc1 bias (F,),
# fc2 weight (D, F), fc2 bias (D,)).
ExpertWeights = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def expert_ffn_ref(x: Tensor, groups: list[tuple[int, int, int]], experts: list[ExpertWeights],
                   gamma: Tensor | None = None, row_scale: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Reference: groups cover [0, T) in order; returns a new (T, D) tensor."""
    pieces = []
    for start, end, e in groups:
        ln_w, ln_b, w1, b1, w2, b2 = experts[e]
        xs = x[start:end]
        h = F.layer_norm(xs, (xs.shape[-1],), ln_w, ln_b, eps)
        h = F.linear(F.gelu(F.linear(h, w1, b1)), w2, b2)
        if gamma is not None:
            h = gamma * h
        if row_scale is not None:
            h = h * row_scale[start:end, None].to(h.dtype)
        pieces.append(xs + h)
    return torch.cat(pieces) if len(pieces) != 1 else pieces[0]


# --------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------
# Epilogues of the GEMM kernel.
EPI_NONE, EPI_GELU, EPI_RESIDUAL, EPI_DGELU = 0, 1, 2, 3


# LayerNorm forward over the rows of one group.
#   X     (M, D) input rows, row stride stride_xm, any float dtype
#   W, B  (D,)   the expert's norm weight and bias
#   Y     (M, D) normalised rows xn, dtype of X, row stride stride_ym
#   MEAN, RSTD (M,) fp32
@triton.jit
def _ln_fwd_kernel(X, W, B, Y, MEAN, RSTD, M, D, stride_xm, stride_ym, eps,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask_m = rows < M
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


# Hopper-sized tiles first; the pruning filter drops tiles far larger than the problem (small text groups) and
# those that break the sm_90 rules for the operands' dtype.
_GEMM_TILES = [  # (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps)
    (128, 128, 64, 4, 8), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4), (32, 64, 64, 4, 4),
]
_GEMM_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s,
                               num_warps=w) for bm, bn, bk, s, w in _GEMM_TILES]
# The interpreter runs one program at a time in numpy: a single small tile keeps tests quick and exercises
# groups both smaller and larger than a tile.
_INTERPRET_CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 4}, num_warps=4,
                                    num_stages=1)]


def _fits_sm90(c: triton.Config, itemsize: int, epilogue: int) -> bool:
    """The sm_90 rules, read from the resource table (python -m vlmo_fast.kernels.aot): bf16/fp16 tiles of at
    least 64 rows (32-row tiles compile to mma.sync, not wgmma), and 64-row tiles for the GELU-derivative
    epilogue, whose extra operand spills 128-row tiles; fp32 (IEEE dots on the FMA units) keeps the
    accumulator within 64 x 64.  Every listed tile's pipelined operands fit the 227 KB of shared memory."""
    k = c.kwargs
    if itemsize == 4:
        return k["BLOCK_M"] * k["BLOCK_N"] <= 64 * 64
    return k["BLOCK_M"] >= 64 and (epilogue != EPI_DGELU or k["BLOCK_M"] == 64)


def _prune_gemm_configs(configs, named_args, **kwargs):
    if len(configs) == 1:
        return configs
    itemsize = named_args["A"].element_size()
    m_cap = max(32 if itemsize == 4 else 64, triton.next_power_of_2(named_args["M"]))
    n_cap = max(64, triton.next_power_of_2(named_args["N"]))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= m_cap and c.kwargs["BLOCK_N"] <= n_cap
            and _fits_sm90(c, itemsize, kwargs.get("EPILOGUE", EPI_NONE))]
    return kept or configs[-1:]


# C = epilogue(A @ B) for one group.  A (M, K) and B (K, N) by strides (any layout, so W1, W2 and their
# transposes are read in place); C, AUX, X, H are row-major with unit column stride and their own row stride.
#   EPI_NONE     C = acc
#   EPI_GELU     u = acc + BIAS[n]; AUX = u (if STORE_AUX); C = gelu_erf(u)
#   EPI_RESIDUAL h = acc + BIAS[n]; AUX = h (if STORE_AUX); C = X + RSCALE[m] * GAMMA[n] * h
#   EPI_DGELU    C = acc * gelu_erf'(AUX)                  (AUX holds u)
# BIAS, GAMMA (N,), RSCALE (M,): any float dtype; unused pointers may be any tensor.  M_BUCKET only keys the
# autotuner (log2 of M), so a new packed token count does not trigger a new search.
@triton.autotune(configs=pick_configs(_GEMM_CONFIGS, _INTERPRET_CONFIGS), do_bench=bench_fn(),
                 key=["N", "K", "M_BUCKET", "EPILOGUE", "STORE_AUX"],
                 prune_configs_by={"early_config_prune": _prune_gemm_configs})
@triton.jit
def _gemm_kernel(A, B, C, BIAS, AUX, X, GAMMA, RSCALE,
                 M, N, K, M_BUCKET,
                 stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_auxm, stride_xm,
                 EPILOGUE: tl.constexpr, STORE_AUX: tl.constexpr, HAS_GAMMA: tl.constexpr,
                 HAS_RSCALE: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped program order: GROUP_M row tiles share each column tile of B while it is in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    m64 = offs_m.to(tl.int64)
    n64 = offs_n.to(tl.int64)
    a_ptrs = A + m64[:, None] * stride_am + offs_k[None, :].to(tl.int64) * stride_ak
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
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    mask = mask_m[:, None] & mask_n[None, :]
    if EPILOGUE == 1:  # EPI_GELU
        u = acc + tl.load(BIAS + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if STORE_AUX:
            tl.store(AUX + m64[:, None] * stride_auxm + offs_n[None, :], u.to(AUX.dtype.element_ty), mask=mask)
        out = 0.5 * u * (1.0 + tl.erf(u * 0.7071067811865476))
    elif EPILOGUE == 2:  # EPI_RESIDUAL
        h = acc + tl.load(BIAS + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
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


# LayerNorm backward plus the residual gradient, over the rows of one group.
#   DXN  (M, D) gradient of the normalised rows; X (M, D) the input rows; W (D,) norm weight
#   MEAN, RSTD (M,) fp32 from the forward; DRES (M, D) gradient reaching x through the residual
#   DX   (M, D) = DRES + LayerNorm backward of DXN
#   DW_PART, DB_PART (num_programs, D) fp32: this program's sums of DXN * xhat and of DXN
@triton.jit
def _ln_bwd_kernel(DXN, X, W, MEAN, RSTD, DRES, DX, DW_PART, DB_PART, M, D,
                   stride_dxnm, stride_xm, stride_dresm, stride_dxm,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask_m = rows < M
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


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------
def _gemm(a: Tensor, b: Tensor, out: Tensor, epilogue: int, bias: Tensor | None = None, aux: Tensor | None = None,
          store_aux: bool = False, x: Tensor | None = None, gamma: Tensor | None = None,
          row_scale: Tensor | None = None) -> None:
    """out (M, N) = epilogue(a (M, K) @ b (K, N)); a and b in any strides, out, aux and x with unit column stride."""
    M, K = a.shape
    N = b.shape[1]
    for t in (out, aux, x):
        assert t is None or t.stride(-1) == 1, "output-like operands need unit column stride"
    args = (a, b, out, out if bias is None else bias, out if aux is None else aux, out if x is None else x,
            out if gamma is None else gamma, out if row_scale is None else row_scale,
            M, N, K, M.bit_length(), a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0),
            0 if aux is None else aux.stride(0), 0 if x is None else x.stride(0))
    meta = dict(EPILOGUE=epilogue, STORE_AUX=store_aux, HAS_GAMMA=gamma is not None,
                HAS_RSCALE=row_scale is not None, IEEE=a.dtype == torch.float32)

    def grid(cfg):
        return (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)

    _gemm_kernel[grid](*args, **meta)


def _ln_rows(D: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps) of the LayerNorm kernels: about 4096 elements per program."""
    block_d = triton.next_power_of_2(D)
    return max(1, min(16, 4096 // block_d)), block_d, 8 if block_d >= 1024 else 4


def _layer_norm(x: Tensor, w: Tensor, b: Tensor, out: Tensor, mean: Tensor, rstd: Tensor, eps: float) -> None:
    M, D = x.shape
    block_m, block_d, warps = _ln_rows(D)
    _ln_fwd_kernel[(triton.cdiv(M, block_m),)](x, w, b, out, mean, rstd, M, D, x.stride(0), out.stride(0), eps,
                                               BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps)


def _layer_norm_bwd(dxn: Tensor, x: Tensor, w: Tensor, mean: Tensor, rstd: Tensor, dres: Tensor,
                    dx: Tensor) -> tuple[Tensor, Tensor]:
    """Writes dx = dres + LayerNorm backward of dxn; returns the fp32 gradients of the norm weight and bias."""
    M, D = x.shape
    block_m, block_d, warps = _ln_rows(D)
    programs = triton.cdiv(M, block_m)
    dw = torch.empty(programs, D, device=x.device, dtype=torch.float32)
    db = torch.empty_like(dw)
    _ln_bwd_kernel[(programs,)](dxn, x, w, mean, rstd, dres, dx, dw, db, M, D, dxn.stride(0), x.stride(0),
                                dres.stride(0), dx.stride(0), BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps)
    return dw.sum(0), db.sum(0)


# --------------------------------------------------------------------------------------------------------------
# Custom ops: opaque nodes for torch.compile.  Groups travel flattened as [start, end, expert, ...] and the
# weights as one flat list of 6 tensors per expert (schemas take no nested lists).
# --------------------------------------------------------------------------------------------------------------
def _triples(flat: list[int]) -> list[tuple[int, int, int]]:
    return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]


def ffn_forward(x: Tensor, groups: list[int], weights: list[Tensor], gamma: Optional[Tensor],
                row_scale: Optional[Tensor], eps: float, save: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward launches.  The GEMMs run in the weights' dtype (the compute dtype); x and out share x's dtype.
    Returns (out, xn, mean, rstd, u, a, h); u is empty unless `save`, h unless `save` and gamma is given."""
    T, D = x.shape
    hidden, cdt = weights[2].shape[0], weights[2].dtype
    store_h = save and gamma is not None
    out, xn, a = torch.empty_like(x), x.new_empty(T, D, dtype=cdt), x.new_empty(T, hidden, dtype=cdt)
    mean = x.new_empty(T, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    u = x.new_empty(T if save else 0, hidden, dtype=cdt)
    h = x.new_empty(T if store_h else 0, D, dtype=cdt)
    for s, e, k in _triples(groups):
        if e == s:
            continue
        ln_w, ln_b, w1, b1, w2, b2 = weights[6 * k:6 * k + 6]
        _layer_norm(x[s:e], ln_w, ln_b, xn[s:e], mean[s:e], rstd[s:e], eps)
        _gemm(xn[s:e], w1.t(), a[s:e], EPI_GELU, bias=b1, aux=u[s:e] if save else None, store_aux=save)
        _gemm(a[s:e], w2.t(), out[s:e], EPI_RESIDUAL, bias=b2, aux=h[s:e] if store_h else None, store_aux=store_h,
              x=x[s:e], gamma=gamma, row_scale=None if row_scale is None else row_scale[s:e])
    return out, xn, mean, rstd, u, a, h


@torch.library.custom_op("vlmo_fast::expert_ffn_fwd", mutates_args=())
def _expert_ffn_fwd(x: Tensor, groups: list[int], weights: list[Tensor], gamma: Optional[Tensor],
                    row_scale: Optional[Tensor], eps: float, save: bool
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return ffn_forward(x, groups, weights, gamma, row_scale, eps, save)


@_expert_ffn_fwd.register_fake
def _(x, groups, weights, gamma, row_scale, eps, save):
    T, D = x.shape
    hidden, cdt = weights[2].shape[0], weights[2].dtype
    mean = x.new_empty(T, dtype=torch.float32)
    return (torch.empty_like(x), x.new_empty(T, D, dtype=cdt), mean, torch.empty_like(mean),
            x.new_empty(T if save else 0, hidden, dtype=cdt), x.new_empty(T, hidden, dtype=cdt),
            x.new_empty(T if save and gamma is not None else 0, D, dtype=cdt))


def ffn_backward(dy: Tensor, x: Tensor, xn: Tensor, mean: Tensor, rstd: Tensor, u: Tensor, a: Tensor, h: Tensor,
                 groups: list[int], weights: list[Tensor], gamma: Optional[Tensor],
                 row_scale: Optional[Tensor]) -> list[Tensor]:
    """The backward launches, GEMMs in the weights' dtype.  Returns [dx, dgamma (empty without gamma), then the
    gradients of `weights` (zeros for unused experts)]."""
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    cdt = weights[2].dtype
    acc: list[Tensor | None] = [None] * len(weights)  # sums over the groups of each expert
    dgamma = torch.zeros_like(gamma, dtype=torch.float32) if gamma is not None else None
    for s, e, k in _triples(groups):
        if e == s:
            continue
        ln_w, ln_b, w1, b1, w2, b2 = weights[6 * k:6 * k + 6]
        dy_g = dy[s:e]
        r = None if row_scale is None else row_scale[s:e, None].to(dy.dtype)
        dh = dy_g if gamma is None else dy_g * gamma.to(dy.dtype)
        dh = (dh if r is None else dh * r).to(cdt)
        if dgamma is not None:
            gh = dy_g.float() * h[s:e].float()
            dgamma += (gh if r is None else gh * r.float()).sum(0)
        du = torch.empty_like(u[s:e])
        _gemm(dh, w2, du, EPI_DGELU, aux=u[s:e])  # (M, D) @ (D, F), times gelu'(u)
        dxn = du @ w1  # (M, D)
        dlnw, dlnb = _layer_norm_bwd(dxn, x[s:e], ln_w, mean[s:e], rstd[s:e], dy_g, dx[s:e])
        group_grads = (dlnw, dlnb, du.t() @ xn[s:e], du.sum(0, dtype=torch.float32), dh.t() @ a[s:e],
                       dh.sum(0, dtype=torch.float32))
        for j, g in enumerate(group_grads):
            i = 6 * k + j
            acc[i] = g if acc[i] is None else acc[i].float() + g  # upcast only when a second group adds
    grads = [torch.zeros_like(w) if g is None else g.to(w.dtype) for g, w in zip(acc, weights)]
    dgamma_out = x.new_empty(0) if gamma is None else dgamma.to(gamma.dtype)
    return [dx, dgamma_out, *grads]


@torch.library.custom_op("vlmo_fast::expert_ffn_bwd", mutates_args=())
def _expert_ffn_bwd(dy: Tensor, x: Tensor, xn: Tensor, mean: Tensor, rstd: Tensor, u: Tensor, a: Tensor, h: Tensor,
                    groups: list[int], weights: list[Tensor], gamma: Optional[Tensor],
                    row_scale: Optional[Tensor]) -> list[Tensor]:
    return ffn_backward(dy, x, xn, mean, rstd, u, a, h, groups, weights, gamma, row_scale)


@_expert_ffn_bwd.register_fake
def _(dy, x, xn, mean, rstd, u, a, h, groups, weights, gamma, row_scale):
    return [torch.empty_like(x), x.new_empty(0) if gamma is None else torch.empty_like(gamma),
            *[torch.empty_like(w) for w in weights]]


# --------------------------------------------------------------------------------------------------------------
# Autograd and the public function
# --------------------------------------------------------------------------------------------------------------
class _ExpertFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, row_scale, groups, eps, *weights):
        out, xn, mean, rstd, u, a, h = torch.ops.vlmo_fast.expert_ffn_fwd(x, groups, list(weights), gamma,
                                                                          row_scale, eps, True)
        ctx.save_for_backward(x, xn, mean, rstd, u, a, h, gamma, row_scale, *weights)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, dy):
        x, xn, mean, rstd, u, a, h, gamma, row_scale, *weights = ctx.saved_tensors
        dx, dgamma, *dweights = torch.ops.vlmo_fast.expert_ffn_bwd(dy, x, xn, mean, rstd, u, a, h, ctx.groups,
                                                                   weights, gamma, row_scale)
        # Like the reference: experts named only by empty groups get zero gradients, others none.
        used = {ctx.groups[i + 2] for i in range(0, len(ctx.groups), 3)}
        dweights = [g if i // 6 in used else None for i, g in enumerate(dweights)]
        return dx, (dgamma if gamma is not None else None), None, None, None, *dweights


def check_expert_ffn_inputs(x: Tensor, groups: list[tuple[int, int, int]], experts: list[ExpertWeights],
                            gamma: Tensor | None, row_scale: Tensor | None) -> None:
    """Raises ValueError unless the groups tile [0, T) in order and every shape matches x (T, D)."""
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating (T, D) tensor, got {x.dim()}-d {x.dtype}")
    T, D = x.shape
    pos = 0
    for g in groups:
        if len(g) != 3:
            raise ValueError(f"each group is (start, end, expert), got {g!r}")
        s, e, k = g
        if s != pos or e < s or not 0 <= k < len(experts):
            raise ValueError(f"groups must cover [0, {T}) in order with valid experts (of {len(experts)}): "
                             f"{groups!r}")
        pos = e
    if pos != T:
        raise ValueError(f"groups cover [0, {pos}) but x has {T} rows: {groups!r}")
    F_ = None
    for k, w in enumerate(experts):
        if len(w) != 6:
            raise ValueError(f"expert {k}: expected 6 weights (norm w, norm b, fc1 w, fc1 b, fc2 w, fc2 b)")
        F_ = w[2].shape[0] if F_ is None else F_
        want = [(D,), (D,), (F_, D), (F_,), (D, F_), (D,)]
        got = [tuple(t.shape) for t in w]
        if got != want:
            raise ValueError(f"expert {k}: weight shapes {got}, expected {want}")
        if any(t.device != x.device for t in w):
            raise ValueError(f"expert {k}: weights on another device than x ({x.device})")
    if gamma is not None and tuple(gamma.shape) != (D,):
        raise ValueError(f"gamma must have shape ({D},), got {tuple(gamma.shape)}")
    if row_scale is not None and tuple(row_scale.shape) != (T,):
        raise ValueError(f"row_scale must have shape ({T},), got {tuple(row_scale.shape)}")


def expert_ffn_triton(x: Tensor, groups: list[tuple[int, int, int]], experts: list[ExpertWeights],
                      gamma: Tensor | None = None, row_scale: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """The fused kernels; same contract as `expert_ffn_ref` (fp32, fp16, bf16; differentiable in x, weights,
    gamma), autocast included: the matmuls take their operands in the autocast dtype where it is enabled, else
    in x's dtype; the output has x's dtype.  On the CPU it needs TRITON_INTERPRET=1."""
    check_expert_ffn_inputs(x, groups, experts, gamma, row_scale)
    if x.shape[0] == 0:
        return x.clone()
    flat_groups = [int(v) for g in groups for v in g]
    weights = [w.to(compute_dtype(x)).contiguous() for ws in experts for w in ws]
    x = x.contiguous()
    gamma = None if gamma is None else gamma.to(x.dtype).contiguous()
    row_scale = None if row_scale is None else row_scale.detach().contiguous()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)
                                              or (gamma is not None and gamma.requires_grad))
    if not needs_grad:
        return torch.ops.vlmo_fast.expert_ffn_fwd(x, flat_groups, weights, gamma, row_scale, eps, False)[0]
    return _ExpertFFN.apply(x, gamma, row_scale, flat_groups, eps, *weights)
