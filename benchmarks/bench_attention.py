"""Packed attention with the relative-position bias: forward and forward+backward, TFLOP/s of useful work.

Providers: `reference` (vlmo_fast/ops/attention_ref.py, dense per pair in torch), `official` (the official
computation: text padded to 40, fp32 logits, a materialised (H, N, N) bias and key mask, softmax, as in spec 1.3),
`sdpa_nobias` (torch SDPA on the dense per-pair form without bias or mask: a speed ceiling), `flex`
(FlexAttention, compiled, with the bias as score_mod and the key mask as a block mask; CUDA only, see below) and
`ours` (vlmo_fast.ops.attention.packed_attention: the Triton kernel on CUDA, its dense SDPA path on the CPU).
`ours`, `reference` and `flex` gather the layer's dense bias from the table inside the timed call (and fold its
gradient back), as a training step does once per layer.
Work counted for every provider is that of the real tokens (4 * H * dh * sum_p Nq_p * Nk_p forward, 3.5x
that forward+backward), so TFLOP/s ratios are speed ratios.  CPU: fp32, batch 8, 224 px only; CUDA: bf16,
batch 64, also 384 and 480 px.

Run: python -m pytest benchmarks/bench_attention.py -q --benchmark-columns=median
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from vlmo_fast.ops.attention import packed_attention
from vlmo_fast.ops.attention_bias import layer_bias, slot_index
from vlmo_fast.ops.attention_ref import dense_key_mask, dense_slots, packed_attention_ref
from vlmo_fast.ops.packing import make_layout_ref
from vlmo_fast.ops.relpos import segment_index, table_rows

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
BATCH = 64 if CUDA else 8
TEXT_PAD = 40  # the official max_text_len


@dataclass(frozen=True)
class Shape:
    name: str
    heads: int
    head_dim: int
    window: int  # image grid side: 14 at 224 px, 24 at 384, 30 at 480
    bias: bool


SHAPES = [Shape("base224", 12, 64, 14, True), Shape("base_plus224", 16, 34, 14, False)]
if CUDA:
    SHAPES += [Shape("base384", 12, 64, 24, True), Shape("base480", 12, 64, 30, True)]


def _problem(shape: Shape):
    """Packed inputs of BATCH pairs with real caption lengths 8..20, and the padded official form."""
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(8, 21, (BATCH,), generator=g, dtype=torch.int32)
    image = shape.window ** 2 + 1
    layout = make_layout_ref(lens.to(DEVICE), image)
    T, H, dh = layout.num_rows, shape.heads, shape.head_dim
    qkv = torch.randn(T, 3, H, dh, generator=g).to(DEVICE, DTYPE)
    table = (0.1 * torch.randn(table_rows(shape.window, TEXT_PAD), H, generator=g)).to(DEVICE) if shape.bias else None
    work = 4 * H * dh * float(((lens + image) ** 2).sum())
    return layout, lens, qkv, table, work


def _official(q, k, v, key_mask, bias, scale):
    """spec 1.3: (B, N, H, dh) padded inputs, fp32 logits, bias (H, N, N), key mask (B, N)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, dh)
    attn = (q * scale).float() @ k.float().transpose(-2, -1)
    if bias is not None:
        attn = attn + bias
    attn = attn.masked_fill(~key_mask[:, None, None, :], float("-inf")).softmax(-1).type_as(q)
    return (attn @ v).transpose(1, 2)


def _padded(layout, lens, qkv, shape):
    """The official padded form: (B, 40 + image, 3, H, dh) and its key mask."""
    B, image = lens.shape[0], layout.max_image
    N = TEXT_PAD + image
    pair = layout.row_pair.long()
    rows = torch.arange(layout.num_rows, device=DEVICE)
    slot = torch.where(rows < layout.num_text_rows, rows - layout.text_start.long()[pair],
                       TEXT_PAD + rows - layout.image_start.long()[pair])
    padded = qkv.new_zeros(B * N, *qkv.shape[1:]).index_copy(0, pair * N + slot, qkv).view(B, N, *qkv.shape[1:])
    pos = torch.arange(N, device=DEVICE)
    key_mask = (pos[None, :] >= TEXT_PAD) | (pos[None, :] < lens.to(DEVICE)[:, None])
    return padded, key_mask


def _provider(name: str, shape: Shape, layout, lens, qkv, table):
    """(fn(qkv, table) -> output, inputs) for one provider."""
    scale = shape.head_dim ** -0.5
    index = slot_index(layout, shape.window, TEXT_PAD, table_rows(shape.window, TEXT_PAD))

    def bias_of(t):
        return None if t is None else layer_bias(t, 0, shape.heads, index)

    if name == "ours":
        return lambda x, t: packed_attention(x[:, 0], x[:, 1], x[:, 2], layout, bias_of(t), scale)
    if name == "reference":
        return lambda x, t: packed_attention_ref(x[:, 0], x[:, 1], x[:, 2], layout, bias_of(t), scale)
    if name == "official":
        padded, key_mask = _padded(layout, lens, qkv, shape)
        padded_index = segment_index(TEXT_PAD, layout.max_image, shape.window, TEXT_PAD, DEVICE)

        def official(x, t):  # x is the padded (B, N, 3, H, dh) tensor here
            bias = t[padded_index].permute(2, 0, 1).float() if t is not None else None
            return _official(x[:, :, 0], x[:, :, 1], x[:, :, 2], key_mask, bias, scale)

        return official, padded
    pair, slot, M = dense_slots(layout)
    dest = pair * M + slot

    def dense(x):  # (T, 3, H, dh) -> 3 x (P, H, M, dh)
        d = x.new_zeros(layout.num_pairs * M, *x.shape[1:]).index_copy(0, dest, x)
        return d.view(layout.num_pairs, M, *x.shape[1:]).permute(2, 0, 3, 1, 4).unbind(0)

    if name == "sdpa_nobias":
        return lambda x, t: F.scaled_dot_product_attention(*dense(x), scale=scale)
    if name == "flex":
        if not CUDA:
            pytest.skip("FlexAttention compiles through inductor: minutes on this 2-core CPU; measured on CUDA")
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        valid = dense_key_mask(layout)[:, 0, 0]  # (P, M)
        block_mask = create_block_mask(lambda b, h, q_idx, kv_idx: valid[b, kv_idx], layout.num_pairs, None, M, M,
                                       device=DEVICE)
        flex = torch.compile(flex_attention, fullgraph=True)

        def run(x, t):
            bias = None if t is None else bias_of(t).dense

            def score_mod(score, b, h, q_idx, kv_idx):
                return score + bias[h, q_idx, kv_idx] if bias is not None else score

            return flex(*dense(x), score_mod=score_mod, block_mask=block_mask, scale=scale)

        return run
    raise ValueError(name)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
@pytest.mark.parametrize("provider", ["reference", "official", "sdpa_nobias", "flex", "ours"])
def test_attention(timed, provider, shape, backward):
    layout, lens, qkv, table, work = _problem(shape)
    made = _provider(provider, shape, layout, lens, qkv, table)
    fn, x = made if isinstance(made, tuple) else (made, qkv)
    x = x.detach().requires_grad_(backward)
    t = table.detach().requires_grad_(backward) if table is not None else None
    if not backward:
        def step():
            with torch.no_grad():
                return fn(x, t)
        timed(step, DEVICE, work=work)
        return
    inputs = [x] + ([t] if t is not None else [])

    def step():
        out = fn(x, t)
        return torch.autograd.grad(out, inputs, torch.ones_like(out), allow_unused=True)  # sdpa_nobias: no table

    timed(step, DEVICE, work=3.5 * work)
