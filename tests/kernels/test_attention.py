"""Packed attention: the Triton kernel (kernels/attention.py, attention_bwd.py) and the CPU dispatch path
against the torch reference.

Contract (design.md, "Numerical policy"): with the reference computed in fp64 as the truth and in the kernel's
dtype, the kernel's error is at most 2x the same-dtype reference's error plus an atol by dtype, scaled by the
tensor's magnitude when it exceeds 1; forward and every gradient (q, k, v, the bias table).  The CPU default
path meets the fixture bounds against the fp32 reference.  Shapes are tiny: the kernels run in Triton's
interpreter here.
"""
from __future__ import annotations

import pytest
import torch

from tests.kernels.parity import (assert_rule, attention_inputs, check_attention, interpreter_tiles,
                                  packed_attention_kernel, run_attention)
from vlmo_fast.ops.attention import packed_attention, packed_attention_qkv, packed_attention_sdpa
from vlmo_fast.ops.attention_bias import layer_bias, slot_index
from vlmo_fast.ops.attention_ref import packed_attention_ref
from vlmo_fast.ops.relpos import table_rows

@pytest.mark.parametrize("head_dim", [16, 24, 34, 64])
def test_kernel_mixed_pairs_padded_text(head_dim):
    """Pairs of text lengths 2..6 padded to 6 query rows (padded rows are queries only) plus 5 image tokens
    (window 2), bias from the middle layer's columns; fp32; every non power-of-two head dim pads in-kernel."""
    check_attention([2, 6, 3], 5, 6, head_dim, torch.float32, bias=True)


@pytest.mark.parametrize("head_dim", [24, 64])
def test_kernel_fp16(head_dim):
    check_attention([4, 2, 7], 5, 8, head_dim, torch.float16, bias=True, seed=1)


def test_kernel_packed_unpadded_long_image():
    """Text segments of their real lengths only, and 10 image tokens (window 3) spanning several key tiles."""
    check_attention([5, 2, 9], 10, None, 16, torch.float32, bias=True, window=3, l0=9, seed=2)


def test_kernel_text_only():
    check_attention([3, 8, 2, 5], 0, 8, 16, torch.float32, bias=True, seed=3)


def test_kernel_image_only():
    check_attention([0, 0], 10, None, 24, torch.float32, bias=True, window=3, seed=4)


def test_kernel_no_bias_fp16():
    check_attention([2, 5, 3], 5, 6, 34, torch.float16, bias=False, seed=5)


@pytest.mark.parametrize("fn", [packed_attention, packed_attention_sdpa], ids=["dispatch", "sdpa"])
def test_cpu_paths_equal_reference(monkeypatch, fn):
    """The CPU default dispatch and its dense SDPA path meet the fixture bounds against the fp32 reference,
    with and without bias, output and every gradient (the bias table's included)."""
    monkeypatch.setenv("VLMO_FAST_KERNELS", "auto")
    for bias in (True, False):
        layout, qkv, table, dout = attention_inputs([3, 7, 12, 5], 10, 12, 3, 24, 3, 12, bias, seed=6)
        ref = run_attention(packed_attention_ref, layout, qkv, table, dout, torch.float32, 3, 3, 12, 0.3)
        got = run_attention(fn, layout, qkv, table, dout, torch.float32, 3, 3, 12, 0.3)
        assert len(got) == len(ref) == 4 + bias
        for i, (g, r) in enumerate(zip(got, ref)):
            tol = (2e-5 + 1e-4 * r.abs().max()) if i == 0 else (1e-5 + 1e-3 * r.abs().max())
            assert (g - r).abs().max() <= tol, f"tensor {i}"


def _bias(layout, table, col, heads, window, l0):
    return layer_bias(table, col, heads, slot_index(layout, window, l0, table.shape[0]))


def test_dispatch_respects_env(monkeypatch):
    """VLMO_FAST_KERNELS=triton runs the kernel on the CPU; =ref the reference (bit-equal to calling it)."""
    layout, qkv, table, _ = attention_inputs([2, 4], 5, None, 2, 16, 2, 8, True, seed=7)
    q, k, v = qkv.float().unbind(1)
    args = (layout, _bias(layout, table.float(), 2, 2, 2, 8), 0.25)
    monkeypatch.setenv("VLMO_FAST_KERNELS", "ref")
    assert torch.equal(packed_attention(q, k, v, *args), packed_attention_ref(q, k, v, *args))
    monkeypatch.setenv("VLMO_FAST_KERNELS", "triton")
    assert torch.equal(packed_attention(q, k, v, *args), packed_attention_kernel(q, k, v, *args))


@pytest.mark.parametrize("kernels", ["auto", "triton"])
def test_compile_fullgraph(monkeypatch, kernels):
    """torch.compile(fullgraph=True) through the dispatch: the kernel is one opaque custom op."""
    monkeypatch.setenv("VLMO_FAST_KERNELS", kernels)
    torch._dynamo.reset()
    layout, qkv, table, dout = attention_inputs([2, 5], 5, 5, 2, 16, 2, 8, True, seed=8)
    eager = run_attention(packed_attention, layout, qkv, table, dout, torch.float32, 2, 2, 8, 0.25)
    compiled = torch.compile(packed_attention, fullgraph=True, backend="aot_eager")
    got = run_attention(compiled, layout, qkv, table, dout, torch.float32, 2, 2, 8, 0.25)
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_opcheck():
    """Schema, fake tensor and autograd registration of the custom ops (torch.library.opcheck)."""
    import vlmo_fast.kernels.attention  # noqa: F401  registers the ops

    layout, qkv, table, dout = attention_inputs([2, 3], 2, None, 1, 16, 1, 4, True, seed=9)
    x = qkv.float().requires_grad_()
    seg = (layout.text_start, layout.text_q_len, layout.text_k_len, layout.image_start, layout.image_len)
    bias = _bias(layout, table.float(), 1, 1, 1, 4).dense.detach().requires_grad_()
    args = (x, *seg, bias, layout.max_text_q, layout.max_image, 0.25)
    torch.library.opcheck(torch.ops.vlmo_fast.packed_attention_fwd.default, args)
    out, lse = torch.ops.vlmo_fast.packed_attention_fwd(*args)
    bwd_args = (dout.float(), x.detach(), out.detach(), lse, *seg, bias.detach(), *args[-3:])
    torch.library.opcheck(torch.ops.vlmo_fast.packed_attention_bwd.default, bwd_args,
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_attention_inputs():
    layout, qkv, table, _ = attention_inputs([2, 3], 5, None, 2, 16, 2, 8, True)
    q, k, v = qkv.float().unbind(1)
    t = table.float()
    bias = _bias(layout, t, 0, 2, 2, 8)
    with pytest.raises(ValueError, match="share one"):
        packed_attention(q, k[:, :1], v, layout, bias, 0.25)
    with pytest.raises(ValueError, match="no columns"):
        _bias(layout, t, 5, 2, 2, 8)
    with pytest.raises(ValueError, match="rows"):
        layer_bias(t, 0, 2, slot_index(layout, 3, 8, table_rows(3, 8)))
    with pytest.raises(ValueError, match="exceed"):
        slot_index(layout, 2, 2, table_rows(2, 2))
    with pytest.raises(ValueError, match="does not fit"):
        packed_attention_qkv(qkv.float(), layout, _bias(layout, t, 0, 1, 2, 8), 0.25)
    with pytest.raises(ValueError, match="layout"):
        packed_attention_qkv(qkv.float()[:-1], layout, bias, 0.25)


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [34, 64])
def test_kernel_bf16_cuda(head_dim):
    """bf16 on a GPU (the interpreter computes bf16 tl.dot wrongly), at a VLMo-base-like 40 + 197 layout."""
    layout, qkv, table, dout = attention_inputs(list(range(8, 21, 2)), 197, 40, 4, head_dim, 14, 40, True, device="cuda")
    truth = run_attention(packed_attention_ref, layout, qkv, table, dout, torch.float64, 4, 14, 40)
    same = run_attention(packed_attention_ref, layout, qkv, table, dout, torch.bfloat16, 4, 14, 40)
    got = run_attention(packed_attention_kernel, layout, qkv, table, dout, torch.bfloat16, 4, 14, 40)
    for name, g, s, t in zip(["out", "dq", "dk", "dv", "dtable"], got, same, truth):
        assert_rule(name, g, s, t, torch.bfloat16)


@pytest.mark.parametrize("head_dim", [96, 128])
def test_kernel_wide_heads(head_dim):
    """The widest head dims (96 padded to 128 in registers), fused layout with padded text, fp32."""
    check_attention([3, 5], 5, 6, head_dim, torch.float32, bias=True, heads=1, seed=14)


def test_kernel_480px_like():
    """A 480 px pair: 901 image rows (30 x 30 patches + [CLS]) beside a caption of 8 tokens, one head, with the
    GPU configs' 64 x 64 tiles (the interpreter's 16 x 16 would take minutes)."""
    with interpreter_tiles(64, 64):
        check_attention([8], 901, None, 16, torch.float32, bias=True, window=30, l0=40, heads=1, seed=15)


def test_bias_gradient_bitwise_reproducible():
    """Two backward passes give bit-identical table gradients (no atomics: per-chunk partial sums in a fixed
    pair order, then a fixed-order segment sum into the table), and the fold equals index_add's sum."""
    layout, qkv, table, dout = attention_inputs([3, 7, 2, 6, 5], 10, None, 2, 16, 3, 8, True, seed=16)
    first = run_attention(packed_attention_kernel, layout, qkv, table, dout, torch.float32, 2, 3, 8)
    second = run_attention(packed_attention_kernel, layout, qkv, table, dout, torch.float32, 2, 3, 8)
    assert torch.equal(first[4], second[4]) and torch.equal(first[1], second[1])
    index = slot_index(layout, 3, 8, table.shape[0])
    tab = table.clone().requires_grad_()
    grad = torch.randn(2, index.num_slots, index.num_slots, dtype=torch.float64)
    layer_bias(tab, 2, 2, index).dense.backward(grad)
    want = torch.zeros_like(table)
    want[:, 2:4].index_add_(0, index.rows, grad.reshape(2, -1).t())
    torch.testing.assert_close(tab.grad, want, rtol=1e-12, atol=1e-12)


def test_bias_follows_autocast(monkeypatch):
    """The kernels load the bias in their operand dtype (autocast's); the CPU roads keep the table's fp32."""
    layout, _, table, _ = attention_inputs([2, 4], 5, None, 2, 16, 2, 8, True, seed=17)
    index = slot_index(layout, 2, 8, table.shape[0])
    for kernels, want in (("triton", torch.bfloat16), ("auto", torch.float32)):
        monkeypatch.setenv("VLMO_FAST_KERNELS", kernels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer_bias(table.float(), 0, 2, index).dense.dtype == want, kernels
