"""Modality-expert FFN: forward and forward+backward throughput (TFLOP/s of the two GEMMs).

Providers, side by side on the same rows:
- reference:  eager torch ops per expert group, as the official code computes it (kernels.expert_ffn_ref);
- compiled:   torch.compile of the reference (inductor);
- dense:      the ceiling: one fc1 -> fc2 GEMM chain (addmm, no LayerNorm, GELU or residual) over all rows with
              a single expert;
- cublas_chain (GPU only, skipped on the CPU): the peer the Triton path is held to (90% of its throughput): the
              whole FFN (LayerNorm, fc1, GELU, fc2, layer scale, residual) over all rows with a single expert as
              eager torch ops, its GEMMs on cuBLAS;
- ours:       the dispatch the model calls (vlmo_fast.ops.expert_ffn): Triton on CUDA, the default torch path on
              the CPU.
Shapes are a stage-3 step: P pairs of ~14 text tokens and 197 image tokens; "below" is a layer below s (text and
image groups with their own experts), "above" a layer from s on (one VL group over every row).

GPU:  pytest benchmarks/bench_expert_ffn.py                  (base, base_plus, large; 64 pairs; bf16)
CPU:  pytest benchmarks/bench_expert_ffn.py                  (base width, 1 pair, fp32; about a minute)
"""
from __future__ import annotations

import pytest
import torch

from vlmo_fast.kernels.expert_ffn import expert_ffn_ref
from vlmo_fast.ops.expert_ffn import expert_ffn

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
WIDTHS = {"base": 768, "base_plus": 544, "large": 1024} if CUDA else {"base": 768}
PAIRS = 64 if CUDA else 1
TEXT_LEN, IMAGE_LEN = 14, 197
PROVIDERS = ["reference", "compiled", "dense", "cublas_chain", "ours"]


def make_problem(D: int, layer: str, requires_grad: bool):
    """x (T, D), the groups of the layer, three experts (text, image, VL), gamma (D,), no row scale."""
    g = torch.Generator().manual_seed(0)
    T_text, T = PAIRS * TEXT_LEN, PAIRS * (TEXT_LEN + IMAGE_LEN)
    F_ = 4 * D

    def p(*shape, scale):
        t = (torch.randn(*shape, generator=g) * scale).to(DEVICE, DTYPE)
        return t.requires_grad_(requires_grad)

    experts = [(p(D, scale=1.0), p(D, scale=0.1), p(F_, D, scale=D ** -0.5), p(F_, scale=0.1),
                p(D, F_, scale=F_ ** -0.5), p(D, scale=0.1)) for _ in range(3)]
    groups = [(0, T_text, 0), (T_text, T, 1)] if layer == "below" else [(0, T, 2)]
    return p(T, D, scale=1.0), groups, experts, p(D, scale=0.1)


def dense_chain(x, groups, experts, gamma, row_scale, eps):
    """The ceiling: the same two GEMMs over every row with one expert and nothing else."""
    _, _, w1, b1, w2, b2 = experts[-1]
    return torch.addmm(b2, torch.addmm(b1, x, w1.t()), w2.t())


def cublas_chain(x, groups, experts, gamma, row_scale, eps):
    """The FFN's math over every row with one expert: cuBLAS GEMMs between torch's LayerNorm and GELU kernels."""
    ln_w, ln_b, w1, b1, w2, b2 = experts[-1]
    xn = torch.nn.functional.layer_norm(x, (x.shape[-1],), ln_w, ln_b, eps)
    h = torch.addmm(b2, torch.nn.functional.gelu(torch.addmm(b1, xn, w1.t())), w2.t())
    return x + gamma * h


def provider_fn(provider: str):
    if provider == "reference":
        return expert_ffn_ref
    if provider == "compiled":
        torch._dynamo.reset()
        return torch.compile(expert_ffn_ref)
    if provider == "dense":
        return dense_chain
    if provider == "cublas_chain":
        return cublas_chain
    return expert_ffn


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("layer", ["below", "above"])
@pytest.mark.parametrize("width", list(WIDTHS))
def test_expert_ffn(timed, benchmark, width, layer, mode, provider):
    if provider == "cublas_chain" and not CUDA:
        pytest.skip("the cuBLAS peer runs on a GPU")
    D = WIDTHS[width]
    train = mode == "fwd_bwd"
    x, groups, experts, gamma = make_problem(D, layer, train)
    fn = provider_fn(provider)
    dy = torch.randn_like(x)
    params = [x, gamma] + [w for e in experts for w in e]

    def step():
        out = fn(x, groups, experts, gamma, None, 1e-6)
        if train:
            torch.autograd.grad(out, params, dy, allow_unused=True)
        return out

    T = x.shape[0]
    flops = 4 * T * D * 4 * D * (3 if train else 1)  # fc1 + fc2: 2*T*D*F each; backward twice the forward
    benchmark.group = f"expert_ffn {width} {layer} {mode}"
    benchmark.extra_info.update(width=width, layer=layer, mode=mode, provider=provider, tokens=T,
                                dtype=str(DTYPE))
    with torch.set_grad_enabled(train):
        timed(step, DEVICE, work=flops, rounds=5 if CUDA else 3, warmup=3 if CUDA else 1)


@pytest.mark.parametrize("width", list(WIDTHS))
def test_layer_norm_pass(timed, benchmark, width):
    """The experts' LayerNorm pass alone (GPU only): its time against the `ours` forward row is the share the
    unfused LayerNorm costs (kernels/expert_ffn_norm.py says why it is not fused into fc1)."""
    if not CUDA:
        pytest.skip("times the Triton LayerNorm kernel on a GPU")
    from vlmo_fast.kernels.expert_ffn import group_table, plan_groups
    from vlmo_fast.kernels.expert_ffn_norm import grouped_layer_norm

    D = WIDTHS[width]
    x, groups, experts, _ = make_problem(D, "below", False)
    x = x.float()
    plan = plan_groups([v for g in groups for v in g])
    table = group_table(plan.table, x.device)
    ws = [experts[e][0] for e in plan.experts]
    bs = [experts[e][1] for e in plan.experts]
    T = x.shape[0]
    xn, mean, rstd = x.new_empty(T, D, dtype=DTYPE), x.new_empty(T), x.new_empty(T)

    def step():
        grouped_layer_norm(x, ws, bs, table, list(plan.rows), xn, mean, rstd, 1e-6)

    benchmark.group = f"expert_ffn {width} layer_norm"
    benchmark.extra_info.update(width=width, tokens=T, dtype=str(DTYPE))
    timed(step, DEVICE, work=T * D * (4 + xn.element_size()), unit="GB/s", rounds=20, warmup=3)
