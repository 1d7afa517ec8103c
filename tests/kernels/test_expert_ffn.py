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
from torch.utils._python_dispatch import TorchDispatchMode
from vlmo_fast.kernels import expert_ffn_norm, expert_ffn_scale, grouped_gemm
from vlmo_fast.kernels.aot import captured
from vlmo_fast.kernels.expert_ffn import expert_ffn_ref, expert_ffn_triton, plan_groups
from vlmo_fast.ops.expert_ffn import expert_ffn

# Uneven groups: an empty group, groups smaller than the interpreter's 16-row tile, one spanning tiles, an
# expert used by two groups (its gradients add up) and an unused expert.
SMALL_GROUPS = [(0, 3, 0), (3, 3, 1), (3, 25, 1), (25, 30, 0), (30, 37, 2)]


@pytest.mark.parametrize("dtype,with_gamma,with_row_scale", [
    (torch.float32, True, True), (torch.float32, False, False), (torch.float32, True, False),
    (torch.float32, False, True), (torch.float16, True, True), (torch.float16, False, False)])
def test_parity_small(dtype, with_gamma, with_row_scale):
    assert_ffn_parity(SMALL_GROUPS, 37, 96, dtype, with_gamma, with_row_scale)


# The layouts of a VLMo layer (experts in Block.experts() order: text 0, image 1, VL 2): 3 captions of 5, 9 and 2
# tokens and 3 images of 10 patches.  Each layout in one dtype (fp16 where the split layer runs twice).
TEXT_ROWS, IMAGE_ROWS = 16, 30
VLMO_LAYOUTS = {
    "text_only": ([(0, TEXT_ROWS, 0)], TEXT_ROWS, torch.float16),
    "image_only": ([(0, IMAGE_ROWS, 1)], IMAGE_ROWS, torch.float32),
    "fused_split": ([(0, TEXT_ROWS, 0), (TEXT_ROWS, TEXT_ROWS + IMAGE_ROWS, 1)], TEXT_ROWS + IMAGE_ROWS,
                    torch.float32),
    "fused_split_fp16": ([(0, TEXT_ROWS, 0), (TEXT_ROWS, TEXT_ROWS + IMAGE_ROWS, 1)], TEXT_ROWS + IMAGE_ROWS,
                         torch.float16),
    "vl": ([(0, TEXT_ROWS + IMAGE_ROWS, 2)], TEXT_ROWS + IMAGE_ROWS, torch.float32),
}


@pytest.mark.parametrize("layout", list(VLMO_LAYOUTS))
def test_parity_vlmo_layouts(layout):
    """Output and every gradient (x, gamma, both norms' weight and bias, fc1 and fc2 weights and biases) for the
    row groups of text-only, image-only, fused below s and fused from s on (VL) layers, with stochastic depth."""
    groups, T, dtype = VLMO_LAYOUTS[layout]
    assert_ffn_parity(groups, T, 64, dtype, True, True, seed=3)


class _MatmulLog(TorchDispatchMode):
    """Records the aten matmuls run inside the block (cuBLAS/oneDNN GEMMs outside the Triton kernels)."""

    MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addmv", "mv"}

    def __init__(self):
        super().__init__()
        self.matmuls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.MATMULS:
            self.matmuls.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("groups", [[(0, 16, 0), (16, 46, 1)], [(0, 3, 0), (3, 3, 1), (3, 25, 1), (25, 30, 0),
                                                                (30, 46, 2)]], ids=["split_layer", "five_groups"])
def test_one_launch_per_stage(groups):
    """However many row groups and experts, a layer's FFN is one launch per stage: forward LayerNorm, fc1 and
    fc2; backward the layer-scale pass, the two activation-gradient GEMMs, the LayerNorm backward and the two
    weight-gradient GEMMs (their bias gradients included); and no GEMM outside the Triton kernels.  The launches are captured, not
    run (vlmo_fast.kernels.aot.captured)."""
    kernels = [grouped_gemm._rows_gemm_kernel, grouped_gemm._wgrad_kernel, expert_ffn_norm._ln_fwd_kernel,
               expert_ffn_norm._ln_bwd_kernel, expert_ffn_scale._scale_bwd_kernel]
    x, experts, gamma, row_scale = ffn_inputs(46, 64, 3, 4, True, True)
    xs = x.float().requires_grad_()
    ws = [tuple(w.float().requires_grad_() for w in e) for e in experts]
    with captured(kernels) as launches, _MatmulLog() as log:
        out = expert_ffn_triton(xs, groups, ws, gamma.float(), row_scale.float())
        forward = [launch.kernel for launch in launches]
        out.backward(torch.ones_like(out))
    backward = [launch.kernel for launch in launches][len(forward):]
    rows, wgrad, ln_fwd, ln_bwd, scale_bwd = kernels
    assert forward == [ln_fwd, rows, rows]
    assert sorted(map(id, backward)) == sorted(map(id, [scale_bwd, rows, rows, ln_bwd, wgrad, wgrad]))
    assert log.matmuls == []


def test_group_plan_slots():
    """Experts with rows get slots in order of first appearance; empty groups leave the table."""
    plan = plan_groups([0, 3, 2, 3, 3, 0, 3, 9, 0, 9, 12, 2])
    assert plan.table == (0, 3, 0, 3, 9, 1, 9, 12, 0)
    assert plan.experts == (2, 0) and plan.rows == (3, 6, 3) and plan.slots == (0, 1, 0)


def test_too_many_experts_raise():
    x, experts, _, _ = ffn_inputs(10, 32, 5, 9, False, False)
    ws = [tuple(w.float() for w in e) for e in experts]
    with pytest.raises(ValueError, match="at most 4 experts"):
        expert_ffn_triton(x.float(), [(2 * k, 2 * k + 2, k) for k in range(5)], ws)


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


@pytest.mark.gpu
def test_gradients_bitwise_reproducible_cuda():
    """The weight and bias gradients sum each expert's groups in a fixed order without atomics: two backward
    passes give bitwise equal gradients."""
    x, experts, gamma, row_scale = ffn_inputs(2000, 768, 2, 10, True, True)
    dy = torch.randn(2000, 768, generator=torch.Generator().manual_seed(11), dtype=torch.float64).to(DEVICE)
    groups = [(0, 300, 0), (300, 1400, 1), (1400, 2000, 0)]
    first, second = (run_ffn(expert_ffn_triton, x, experts, gamma, row_scale, groups, torch.bfloat16, dy)
                     for _ in range(2))
    for name, a, b in zip(ffn_names(experts, gamma), first, second):
        assert torch.equal(a, b), name
