"""The CPU training road of a block's self-attention (qkv projection on the dense per-pair rows) against the qkv
GEMM on packed rows followed by the reference attention: output and every gradient (x, qkv weight and bias, the
bias table), in fp64, for padded query rows, text-only and image-only passes, and a subset of output rows."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlmo_fast.ops.attention_bias import layer_bias, slot_index
from vlmo_fast.ops.attention_ref import packed_attention_ref
from vlmo_fast.ops.packing import make_layout_ref
from vlmo_fast.ops.relpos import table_rows
from vlmo_fast.ops.self_attention import dense_self_attention, self_attention

H, DH, WINDOW, L0 = 2, 8, 3, 10


def layer(layout, table):
    return None if table is None else layer_bias(table, H, H, slot_index(layout, WINDOW, L0, table.shape[0]))


def reference(x, weight, bias, layout, table, rows):
    T, D = x.shape
    qkv = F.linear(x, weight, bias).view(T, 3, H, DH)
    out = packed_attention_ref(qkv[:, 0], qkv[:, 1], qkv[:, 2], layout, layer(layout, table), DH ** -0.5)
    out = out.reshape(T, D)
    return out if rows is None else out[rows]


def run(fn, layout, rows, with_bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    D = H * DH
    x = torch.randn(layout.num_rows, D, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3 * D, D, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3 * D, generator=g, dtype=torch.float64, requires_grad=True)
    table = (torch.randn(table_rows(WINDOW, L0), 3 * H, generator=g, dtype=torch.float64, requires_grad=True)
             if with_bias else None)
    out = fn(x, weight, bias, layout, table, rows)
    out.backward(torch.randn(out.shape, generator=g, dtype=torch.float64))
    return [out] + [t.grad for t in (x, weight, bias, table) if t is not None]


def dense(x, weight, bias, layout, table, rows):
    return dense_self_attention(x, weight, bias, H, layout, layer(layout, table), DH ** -0.5, rows)


@pytest.mark.parametrize("text_lens,image_len,text_q_len,rows", [
    ([2, 6, 3], 5, 6, None),          # fused pass, text padded to 6 query rows
    ([5, 2, 9], 5, None, [0, 7, 20]),  # real lengths only; only three output rows read
    ([3, 8, 2, 5], 0, 8, None),       # text-only pass
    ([0, 0], 10, None, None),         # image-only pass (the dense form is the packed form)
    ([3, 5], 0, 5, None),             # text-only, every pair 5 query rows: packed = dense, keys still masked
], ids=["fused-padded", "rows", "text-only", "image-only", "text-only-packed-is-dense"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_dense_road_equals_packed_reference(text_lens, image_len, text_q_len, rows, with_bias):
    layout = make_layout_ref(torch.tensor(text_lens, dtype=torch.int32), image_len, text_q_len)
    rows = None if rows is None else torch.tensor(rows)
    for name, got, want in zip(["out", "dx", "dweight", "dbias", "dtable"], run(dense, layout, rows, with_bias),
                               run(reference, layout, rows, with_bias)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


def test_dispatch_takes_the_dense_road_only_for_cpu_training(monkeypatch):
    layout = make_layout_ref(torch.tensor([3, 5], dtype=torch.int32), 5, None)
    x = torch.randn(layout.num_rows, H * DH)
    weight = torch.randn(3 * H * DH, H * DH, requires_grad=True)
    called = []
    import vlmo_fast.ops.self_attention as mod
    monkeypatch.setattr(mod, "dense_self_attention", lambda *a, **k: called.append(1) or torch.zeros(()))
    self_attention(x, weight, None, H, layout, None, 0.25)
    assert called == [1]
    with torch.no_grad():
        self_attention(x, weight, None, H, layout, None, 0.25)
    monkeypatch.setenv("VLMO_FAST_KERNELS", "ref")
    self_attention(x, weight, None, H, layout, None, 0.25)
    assert called == [1]
