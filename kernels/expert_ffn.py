"""Modality-expert FFN over contiguous row groups.

For each group (start, end, e) of rows of x (T, D): x + r * gamma * fc2(gelu(fc1(layer_norm_e(x)))) with the
LayerNorm and MLP of expert e, gamma the block's layer scale (or none) and r an optional per-row scale
(stochastic depth).  In the packed layout every expert owns contiguous rows, so no gather or scatter is needed.

Why it is fast: one launch per stage for every row group and expert of the layer (kernels/grouped_gemm.py: a
group table on the device, each row tile finds its group and expert by scanning it), whatever the number of
groups, so small text groups share waves with the image rows instead of running alone.
Forward, three launches:
1. LayerNorm (kernels/expert_ffn_norm.py, memory bound; why it is not fused into fc1 is said there): writes
   the normalised rows xn and the per-row mean and rstd.
2. fc1 with bias + exact-erf GELU in its epilogue: writes the pre-activation u (kept for the backward) and
   a = gelu(u).  Without the fused epilogue a separate GELU pass over the (T, 4D) activations costs about half
   as much as the GEMM itself.
3. fc2 with bias, layer scale, row scale and the residual add in its epilogue: writes the output rows (and the
   fc2 output h, needed only for gamma's gradient).
Backward, six launches: du = (dh @ W2) * gelu'(u) (the derivative fused into the epilogue, saving a (T, 4D)
pass), dxn = du @ W1, the LayerNorm backward plus the residual gradient, and the weight-gradient GEMMs of fc1
and of fc2, each with its bias gradient, per expert over all its groups in fp32 and a fixed order
(deterministic, no atomics); before them one pass (kernels/expert_ffn_scale.py) writes dh = dy * gamma * r and
the partial sums of gamma's gradient.  The LayerNorm and gamma gradients are per-program partial sums reduced
in torch in a fixed order.

Choices and limits:
- The weights stay the model's separate parameters: the grouped kernels take up to four experts' weight
  pointers and pick theirs per program (grouped_gemm.MAX_SLOTS experts with rows per call; VLMo needs two).
- Accumulation is fp32 in every kernel; fp32 inputs use IEEE dot products (no TF32).  The matmuls run in the
  compute dtype: the autocast dtype under torch.autocast, else x's dtype.  Weights are cast to it by the public
  function (a no-op when they match; autograd casts their gradients back); x, the residual and the output keep
  x's dtype (an fp32 residual stream stays fp32 while the GEMM operands are bf16), LayerNorm statistics fp32.
- Saved for the backward: xn (T, D), mean and rstd (T,), u and a (T, 4D), h (T, D) when gamma is given; the
  same activations the official eager code keeps.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .autocast import compute_dtype
from .expert_ffn_norm import grouped_layer_norm, grouped_layer_norm_bwd, ln_rows, reduce_partials
from .expert_ffn_scale import scale_bwd
from .grouped_gemm import (EPI_DGELU, EPI_GELU, EPI_NONE, EPI_RESIDUAL, MAX_SLOTS, grouped_rows_gemm,
                           grouped_weight_grad)

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
# The launches.  Groups travel flattened as [start, end, expert, ...] and the weights as one flat list of 6
# tensors per expert (custom-op schemas take no nested lists).
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupPlan:
    """The non-empty groups of a call as the grouped kernels take them: each expert with rows gets a slot."""

    table: tuple[int, ...]    # start, end, slot per non-empty group, in row order
    rows: tuple[int, ...]     # rows per non-empty group
    slots: tuple[int, ...]    # slot per non-empty group
    experts: tuple[int, ...]  # expert index of each slot


def plan_groups(groups: list[int]) -> GroupPlan:
    """Slots numbered in order of the experts' first non-empty group."""
    experts: list[int] = []
    table, rows, slots = [], [], []
    for i in range(0, len(groups), 3):
        s, e, k = groups[i:i + 3]
        if e == s:
            continue
        if k not in experts:
            experts.append(k)
        slot = experts.index(k)
        table += [s, e, slot]
        rows.append(e - s)
        slots.append(slot)
    return GroupPlan(tuple(table), tuple(rows), tuple(slots), tuple(experts))


@functools.lru_cache(maxsize=64)
def group_table(table: tuple[int, ...], device: torch.device) -> Tensor:
    """The group table as an int32 (G, 3) tensor on the device, copied there once per distinct layout."""
    return torch.tensor(table, dtype=torch.int32, device=device).view(-1, 3)


def _expert_weights(weights: list[Tensor], plan: GroupPlan, j: int) -> list[Tensor]:
    """Weight j (0 norm w, 1 norm b, 2 fc1 w, 3 fc1 b, 4 fc2 w, 5 fc2 b) of every slot's expert."""
    return [weights[6 * e + j] for e in plan.experts]


def ffn_forward(x: Tensor, groups: list[int], weights: list[Tensor], gamma: Optional[Tensor],
                row_scale: Optional[Tensor], eps: float, save: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward launches.  The GEMMs run in the weights' dtype (the compute dtype); x and out share x's dtype.
    Returns (out, xn, mean, rstd, u, a, h); u is empty unless `save`, h unless `save` and gamma is given."""
    T, D = x.shape
    hidden, gemm_dtype = weights[2].shape[0], weights[2].dtype
    store_h = save and gamma is not None
    out, xn, a = torch.empty_like(x), x.new_empty(T, D, dtype=gemm_dtype), x.new_empty(T, hidden, dtype=gemm_dtype)
    mean = x.new_empty(T, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    u = x.new_empty(T if save else 0, hidden, dtype=gemm_dtype)
    h = x.new_empty(T if store_h else 0, D, dtype=gemm_dtype)
    plan = plan_groups(groups)
    if not plan.rows:
        return out, xn, mean, rstd, u, a, h
    table, rows = group_table(plan.table, x.device), list(plan.rows)
    w = [_expert_weights(weights, plan, j) for j in range(6)]
    grouped_layer_norm(x, w[0], w[1], table, rows, xn, mean, rstd, eps)
    grouped_rows_gemm(xn, [w1.t() for w1 in w[2]], table, rows, a, EPI_GELU, biases=w[3],
                      aux=u if save else None, store_aux=save)
    grouped_rows_gemm(a, [w2.t() for w2 in w[4]], table, rows, out, EPI_RESIDUAL, biases=w[5],
                      aux=h if store_h else None, store_aux=store_h, x=x, gamma=gamma, row_scale=row_scale)
    return out, xn, mean, rstd, u, a, h


@torch.library.custom_op("vlmo_fast::expert_ffn_fwd", mutates_args=())
def _expert_ffn_fwd(x: Tensor, groups: list[int], weights: list[Tensor], gamma: Optional[Tensor],
                    row_scale: Optional[Tensor], eps: float, save: bool
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return ffn_forward(x, groups, weights, gamma, row_scale, eps, save)


@_expert_ffn_fwd.register_fake
def _(x, groups, weights, gamma, row_scale, eps, save):
    T, D = x.shape
    hidden, gemm_dtype = weights[2].shape[0], weights[2].dtype
    mean = x.new_empty(T, dtype=torch.float32)
    return (torch.empty_like(x), x.new_empty(T, D, dtype=gemm_dtype), mean, torch.empty_like(mean),
            x.new_empty(T if save else 0, hidden, dtype=gemm_dtype), x.new_empty(T, hidden, dtype=gemm_dtype),
            x.new_empty(T if save and gamma is not None else 0, D, dtype=gemm_dtype))


def ffn_backward(dy: Tensor, x: Tensor, xn: Tensor, mean: Tensor, rstd: Tensor, u: Tensor, a: Tensor, h: Tensor,
                 groups: list[int], weights: list[Tensor], gamma: Optional[Tensor],
                 row_scale: Optional[Tensor]) -> list[Tensor]:
    """The backward launches, GEMMs in the weights' dtype.  Returns [dx, dgamma (empty without gamma), then per
    slot of `plan_groups(groups)` stacked in the weights' dtype: norm weight and bias (S, D), fc1 weight
    (S, F, D) and bias (S, F), fc2 weight (S, D, F) and bias (S, D)]."""
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    gemm_dtype = weights[2].dtype
    dh, dgamma = scale_bwd(dy, h, gamma, row_scale, gemm_dtype)  # dy * gamma * r, and gamma's gradient
    dgamma = x.new_empty(0) if dgamma is None else dgamma
    plan = plan_groups(groups)
    table, rows = group_table(plan.table, x.device), list(plan.rows)
    w = [_expert_weights(weights, plan, j) for j in range(6)]
    du = torch.empty_like(u)
    grouped_rows_gemm(dh, w[4], table, rows, du, EPI_DGELU, aux=u)  # (T, D) @ (D, F), times gelu'(u)
    dxn = torch.empty_like(xn)
    grouped_rows_gemm(du, w[2], table, rows, dxn, EPI_NONE)  # (T, F) @ (F, D)
    dw_part, db_part = grouped_layer_norm_bwd(dxn, x, w[0], mean, rstd, dy, dx, table, rows)
    S = len(plan.experts)
    block_m = ln_rows(x.shape[1])[0]
    dlnw = torch.stack(reduce_partials(dw_part, rows, list(plan.slots), S, block_m)).to(gemm_dtype)
    dlnb = torch.stack(reduce_partials(db_part, rows, list(plan.slots), S, block_m)).to(gemm_dtype)
    dw1, db1 = grouped_weight_grad(du, xn, table, S, True)
    dw2, db2 = grouped_weight_grad(dh, a, table, S, True)
    return [dx, dgamma, dlnw, dlnb, dw1, db1, dw2, db2]


@torch.library.custom_op("vlmo_fast::expert_ffn_bwd", mutates_args=())
def _expert_ffn_bwd(dy: Tensor, x: Tensor, xn: Tensor, mean: Tensor, rstd: Tensor, u: Tensor, a: Tensor, h: Tensor,
                    groups: list[int], weights: list[Tensor], gamma: Optional[Tensor],
                    row_scale: Optional[Tensor]) -> list[Tensor]:
    return ffn_backward(dy, x, xn, mean, rstd, u, a, h, groups, weights, gamma, row_scale)


@_expert_ffn_bwd.register_fake
def _(dy, x, xn, mean, rstd, u, a, h, groups, weights, gamma, row_scale):
    S = len(plan_groups(groups).experts)
    return [torch.empty_like(x), x.new_empty(0) if gamma is None else torch.empty_like(gamma),
            *[w.new_empty(S, *w.shape) for w in weights[:6]]]


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
        dx, dgamma, *per_slot = torch.ops.vlmo_fast.expert_ffn_bwd(dy, x, xn, mean, rstd, u, a, h, ctx.groups,
                                                                   weights, gamma, row_scale)
        # Like the reference: experts named only by empty groups get zero gradients, others none.
        used = {ctx.groups[i + 2] for i in range(0, len(ctx.groups), 3)}
        dweights = [torch.zeros_like(w) if i // 6 in used else None for i, w in enumerate(weights)]
        for slot, e in enumerate(plan_groups(ctx.groups).experts):
            dweights[6 * e:6 * e + 6] = [g[slot] for g in per_slot]
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
    if len({k for s, e, k in groups if e > s}) > MAX_SLOTS:
        raise ValueError(f"at most {MAX_SLOTS} experts may own rows in one call: {groups!r}")
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
