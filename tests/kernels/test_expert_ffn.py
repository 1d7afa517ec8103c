"""The Triton modality-expert FFN against its torch reference.

Contract (design.md, "Numerical policy"): with the reference computed in fp64 as the truth and in the kernel's
dtype, the kernel's error against the truth is at most 2x the same-dtype reference's error plus an atol by
dtype, scaled by max(1, max|truth|); for the output and the gradient of x, gamma and every expert weight.
On the CPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py), in fp32 and fp16 on small shapes.
"""
from __future__ import annotations

import pytest
import torch

from tests.kernels.parity import DEVICE, assert_ffn_parity, ffn_inputs, ffn_names, run_ffn
from vlmo_fast.kernels.expert_ffn import expert_ffn_ref, expert_ffn_triton
from vlmo_fast.ops.expert_ffn import expert_ffn

# Uneven groups: an empty group, groups smaller than the interpreter's 16-row tile, one spanning tiles, an
# expert used by two groups (its gradients add up) and an unused expert.
SMALL_GROUPS = [(0, 3, 0), (3, 3, 1), (3, 25, 1), (25, 30, 0), (30, 37, 2)]


@pytest.mark.parametrize("dtype,with_gamma,with_row_scale", [
    (torch.float32, True, True), (torch.float32, False, False), (torch.float32, True, False),
    (torch.float32, False, True), (torch.float16, True, True), (torch.float16, False, False)])
def test_parity_small(dtype, with_gamma, with_row_scale):
    assert_ffn_parity(SMALL_GROUPS, 37, 96, dtype, with_gamma, with_row_scale)


def test_unused_expert_has_no_gradient():
    """Expert 1 only has an empty group (zero gradients, as in the reference), expert 3 none (no gradient)."""
    assert_ffn_parity([(0, 10, 0), (10, 10, 1), (10, 20, 2)], 20, 96, torch.float32, True, False, num_experts=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_parity_base_plus_width(dtype):
    """D = 544 (base_plus): not a multiple of the K tile, text + image groups below s."""
    assert_ffn_parity([(0, 5, 0), (5, 5, 2), (5, 21, 1)], 21, 544, dtype, True, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_parity_base_width(dtype):
    """D = 768 (base): one VL group over all rows, as above s."""
    assert_ffn_parity([(0, 18, 2)], 18, 768, dtype, dtype == torch.float32, dtype == torch.float16)


def test_inference_path_matches_training_path():
    """Without grad the forward skips saving u and h; the output is the same."""
    x, experts, gamma, row_scale = ffn_inputs(20, 96, 2, 3, True, True)
    args = (x.float(), [(0, 7, 0), (7, 20, 1)], [tuple(w.float() for w in e) for e in experts], gamma.float(),
            row_scale.float())
    with torch.no_grad():
        out = expert_ffn_triton(*args)
    xg = args[0].clone().requires_grad_()
    out_grad = expert_ffn_triton(xg, *args[1:])
    assert torch.equal(out, out_grad.detach())


def test_weights_in_another_dtype_are_cast():
    """fp32 weights with fp16 x compute in fp16 and return fp32 weight gradients."""
    x, experts, gamma, _ = ffn_inputs(16, 96, 1, 4, True, False)
    ws = [tuple(w.float().requires_grad_() for w in experts[0])]
    xh = x.half().requires_grad_()
    out = expert_ffn_triton(xh, [(0, 16, 0)], ws, gamma.float(), None)
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert all(w.grad is not None and w.grad.dtype == torch.float32 for w in ws[0])
    ref = expert_ffn_ref(x.half(), [(0, 16, 0)], [tuple(w.half() for w in experts[0])], gamma.half())
    assert (out.float() - ref.float()).abs().max().item() < 2e-2


@pytest.mark.parametrize("groups,match", [
    ([(0, 5, 0)], "cover"),
    ([(0, 5, 0), (6, 10, 0)], "in order"),
    ([(0, 10, 3)], "valid experts"),
    ([(0, 4, 0), (4, 10)], "start, end, expert"),
])
def test_bad_groups_raise(groups, match):
    x, experts, _, _ = ffn_inputs(10, 96, 1, 5, False, False)
    with pytest.raises(ValueError, match=match):
        expert_ffn_triton(x.float(), groups, [tuple(w.float() for w in experts[0])])


def test_bad_shapes_raise():
    x, experts, _, _ = ffn_inputs(10, 96, 1, 6, False, False)
    ws = [tuple(w.float() for w in experts[0])]
    with pytest.raises(ValueError, match="gamma"):
        expert_ffn_triton(x.float(), [(0, 10, 0)], ws, torch.ones(95))
    with pytest.raises(ValueError, match="row_scale"):
        expert_ffn_triton(x.float(), [(0, 10, 0)], ws, None, torch.ones(9))
    bad = [ws[0][:2] + (ws[0][2][:, :90],) + ws[0][3:]]
    with pytest.raises(ValueError, match="weight shapes"):
        expert_ffn_triton(x.float(), [(0, 10, 0)], bad)


@pytest.mark.parametrize("kernels", ["ref", "triton"])
def test_dispatch_under_torch_compile(kernels, monkeypatch):
    """The dispatch compiles with fullgraph=True (the kernels as opaque custom ops) and matches eager."""
    monkeypatch.setenv("VLMO_FAST_KERNELS", kernels)
    x, experts, gamma, row_scale = ffn_inputs(24, 96, 2, 7, True, True)
    groups = [(0, 9, 0), (9, 24, 1)]
    dy = torch.randn(24, 96, generator=torch.Generator().manual_seed(8), dtype=torch.float64).to(DEVICE)
    eager = run_ffn(expert_ffn, x, experts, gamma, row_scale, groups, torch.float32, dy)
    torch._dynamo.reset()
    compiled = torch.compile(expert_ffn, fullgraph=True, backend="aot_eager")
    got = run_ffn(compiled, x, experts, gamma, row_scale, groups, torch.float32, dy)
    for name, e, c in zip(ffn_names(experts, gamma), eager, got):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("D,T,groups", [(768, 1000, [(0, 180, 0), (180, 1000, 1)]), (544, 300, [(0, 300, 2)])])
def test_parity_bf16_cuda(D, T, groups):
    """bf16 on the GPU (the interpreter's bf16 dot is wrong), at sizes that use the autotuned tiles."""
    assert_ffn_parity(groups, T, D, torch.bfloat16, True, True)
