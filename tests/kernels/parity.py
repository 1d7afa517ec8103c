"""Parity helpers shared by the kernel tests (design.md, "Numerical policy").

With the reference computed in fp64 as the truth and in the kernel's dtype, the kernel's error against the truth
is at most 2x the same-dtype reference's error plus an atol by dtype, scaled by max(1, max|truth|); for the
output and every gradient.
"""
from __future__ import annotations

import contextlib

import torch

from vlmo_fast.kernels.expert_ffn import expert_ffn_ref, expert_ffn_triton
from vlmo_fast.ops.attention import packed_attention_qkv
from vlmo_fast.ops.attention_bias import layer_bias, slot_index
from vlmo_fast.ops.attention_ref import packed_attention_ref
from vlmo_fast.ops.packing import make_layout_ref
from vlmo_fast.ops.relpos import table_rows

ATOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
LAYERS = 3  # the table holds three layers' columns; the tests use the middle one


def attention_inputs(text_lens: list[int], image_len: int, text_q_len: int | None, heads: int, head_dim: int,
            window: int, l0: int, bias: bool, seed: int = 0, device: str = "cpu"):
    """Layout, fp64 (T, 3, H, dh) qkv, fp64 (R, H * LAYERS) table or None, and an fp64 output gradient."""
    g = torch.Generator().manual_seed(seed)
    layout = make_layout_ref(torch.tensor(text_lens, dtype=torch.int32, device=device), image_len, text_q_len)
    T = layout.num_rows
    qkv = torch.randn(T, 3, heads, head_dim, generator=g, dtype=torch.float64).to(device)
    table = (torch.randn(table_rows(window, l0), heads * LAYERS, generator=g, dtype=torch.float64).to(device)
             if bias else None)
    dout = torch.randn(T, heads, head_dim, generator=g, dtype=torch.float64).to(device)
    return layout, qkv, table, dout


def packed_attention_kernel(q, k, v, layout, bias, scale):
    """The Triton kernel through its op-level entry (one (T, 3, H, dh) tensor), q, k, v given apart."""
    return packed_attention_qkv(torch.stack([q, k, v], 1), layout, bias, scale)


def run_attention(fn, layout, qkv, table, dout, dtype, col, window, l0, scale=None):
    """Output and the gradients (dq, dk, dv, dtable) of fn(q, k, v, layout, bias, scale) on qkv/table cast to
    dtype, the bias gathered from the table's columns [col, col + H), all as fp64."""
    x = qkv.detach().to(dtype).requires_grad_()
    tab = table.detach().to(dtype).requires_grad_() if table is not None else None
    bias = None
    if tab is not None:
        bias = layer_bias(tab, col, qkv.shape[2], slot_index(layout, window, l0, tab.shape[0]))
    scale = qkv.shape[-1] ** -0.5 if scale is None else scale
    out = fn(x[:, 0], x[:, 1], x[:, 2], layout, bias, scale)
    out.backward(dout.to(dtype))
    grads = [x.grad[:, i] for i in range(3)] + ([tab.grad] if tab is not None else [])
    return [t.detach().double() for t in [out] + grads]


@contextlib.contextmanager
def interpreter_tiles(block_m: int, block_n: int):
    """Every attention autotuner holds one (block_m, block_n) config inside the block."""
    import triton

    from vlmo_fast.kernels import attention, attention_bwd

    tuners = (attention._fwd_kernel, attention_bwd._dq_kernel, attention_bwd._dkdv_kernel)
    saved = [t.configs for t in tuners]
    for t in tuners:
        t.configs = [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=4, num_stages=1)]
        t.cache.clear()
    try:
        yield
    finally:
        for t, configs in zip(tuners, saved):
            t.configs = configs
            t.cache.clear()


def assert_rule(name: str, got: torch.Tensor, same: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype):
    scale = max(1.0, truth.abs().max().item())
    err = (got - truth).abs().max().item()
    ref_err = (same - truth).abs().max().item()
    bound = 2 * ref_err + ATOL[dtype] * scale
    assert err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g} (same-dtype reference error {ref_err:.3g})"


def check_attention(text_lens, image_len, text_q_len, head_dim, dtype, bias, window=2, l0=8, heads=2, seed=0,
                    device="cpu"):
    layout, qkv, table, dout = attention_inputs(text_lens, image_len, text_q_len, heads, head_dim, window, l0, bias, seed,
                                                device)
    col = heads  # the middle layer's columns
    truth = run_attention(packed_attention_ref, layout, qkv, table, dout, torch.float64, col, window, l0)
    same = run_attention(packed_attention_ref, layout, qkv, table, dout, dtype, col, window, l0)
    got = run_attention(packed_attention_kernel, layout, qkv, table, dout, dtype, col, window, l0)
    for name, g, s, t in zip(["out", "dq", "dk", "dv", "dtable"], got, same, truth):
        assert torch.isfinite(g).all(), name
        assert_rule(name, g, s, t, dtype)
    if bias:
        dtable = got[4]
        outside = torch.cat([dtable[:, :col], dtable[:, col + heads:]], 1)
        assert torch.count_nonzero(outside) == 0, "bias gradient outside the layer's columns"
        assert dtable[:, col:col + heads].abs().sum() > 0



# The kernels run where the GPU is; on a machine without one, on the CPU under the interpreter.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def ffn_inputs(T: int, D: int, num_experts: int, seed: int, with_gamma: bool, with_row_scale: bool):
    """fp64 tensors on DEVICE: x (T, D), experts in the official layout (F = 4D), gamma (D,) or None, row_scale
    (T,) or None (stochastic depth: 0 or 1/keep per row)."""
    g = torch.Generator().manual_seed(seed)
    F = 4 * D

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(DEVICE)

    x = rnd(T, D, shift=0.3)
    experts = [(rnd(D, scale=0.2, shift=1.0), rnd(D, scale=0.1), rnd(F, D, scale=D ** -0.5), rnd(F, scale=0.1),
                rnd(D, F, scale=F ** -0.5), rnd(D, scale=0.1)) for _ in range(num_experts)]
    gamma = rnd(D, scale=0.05, shift=0.1) if with_gamma else None
    row_scale = None
    if with_row_scale:
        keep = torch.rand(T, generator=g) < 0.75
        row_scale = (keep.double() / 0.75).to(DEVICE)
    return x, experts, gamma, row_scale


def run_ffn(fn, x, experts, gamma, row_scale, groups, dtype, dy):
    """Output and the gradients of (x, gamma, every weight) with inputs cast to dtype."""
    leaves = [x.to(dtype).requires_grad_()]
    ws = [tuple(w.to(dtype).requires_grad_() for w in e) for e in experts]
    gm = None if gamma is None else gamma.to(dtype).requires_grad_()
    rs = None if row_scale is None else row_scale.to(dtype)
    out = fn(leaves[0], groups, ws, gm, rs, 1e-6)
    inputs = leaves + ([gm] if gm is not None else []) + [w for e in ws for w in e]
    grads = torch.autograd.grad(out, inputs, dy.to(dtype), allow_unused=True)
    return [out.detach()] + [None if g is None else g.detach() for g in grads]


def ffn_names(experts, gamma):
    return (["out", "dx"] + (["dgamma"] if gamma is not None else [])
            + [f"e{k}.{n}" for k in range(len(experts)) for n in ("ln_w", "ln_b", "w1", "b1", "w2", "b2")])


def assert_ffn_parity(groups, T, D, dtype, with_gamma, with_row_scale, num_experts=3, seed=0):
    x, experts, gamma, row_scale = ffn_inputs(T, D, num_experts, seed, with_gamma, with_row_scale)
    dy = torch.randn(T, D, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(DEVICE)
    truth = run_ffn(expert_ffn_ref, x, experts, gamma, row_scale, groups, torch.float64, dy)
    ref = run_ffn(expert_ffn_ref, x, experts, gamma, row_scale, groups, dtype, dy)
    got = run_ffn(expert_ffn_triton, x, experts, gamma, row_scale, groups, dtype, dy)
    for name, t, r, k in zip(ffn_names(experts, gamma), truth, ref, got):
        if t is None:  # an expert no group uses: no gradient from either path
            assert r is None and k is None, name
            continue
        assert k is not None and k.dtype == dtype and k.shape == t.shape, name
        scale = max(1.0, t.abs().max().item())
        ref_err = (r.double() - t).abs().max().item()
        err = (k.double() - t).abs().max().item()
        assert err <= 2 * ref_err + ATOL[dtype] * scale, f"{name}: err {err:.3g}, ref err {ref_err:.3g}"


