"""Dispatch of the modality-expert FFN (kernels/expert_ffn.py).

Triton kernels on CUDA (or anywhere with VLMO_FAST_KERNELS=triton, under TRITON_INTERPRET=1 on the CPU); the
torch reference otherwise.  On the CPU the reference is already the fast path: its time is the two GEMMs
(oneDNN) and the GELU over the (T, 4D) activations, which any torch re-arrangement leaves as they are, and
under torch.compile inductor fuses its elementwise tail (benchmarks/bench_expert_ffn.py measures both).
"""
from __future__ import annotations

from torch import Tensor

from vlmo_fast.kernels.expert_ffn import ExpertWeights, expert_ffn_ref, expert_ffn_triton
from .backend import use_triton


def expert_ffn(x: Tensor, groups: list[tuple[int, int, int]], experts: list[ExpertWeights],
               gamma: Tensor | None, row_scale: Tensor | None, eps: float) -> Tensor:
    """x + r * gamma * mlp_e(norm_e(x)) for each row group (start, end, expert index)."""
    if use_triton(x):
        return expert_ffn_triton(x, groups, experts, gamma, row_scale, eps)
    return expert_ffn_ref(x, groups, experts, gamma, row_scale, eps)
