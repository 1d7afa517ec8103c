"""Packed multi-pair attention with VLMo's relative position bias.

Computes, for every query row of pair p, softmax(q k^T * scale + bias) v over the keys of pair p: its real
text tokens and its image tokens (design.md, "The packed layout").  The bias is the layer's dense (H, M, M)
tile source (M = max_text + max_image slots; vlmo_fast/ops/attention_bias.py builds it once per step), the same
for every pair, loaded as 2-D tiles beside K/V.

Why it is fast: one flash-attention style program per (pair, query tile, head) walks only its own pair's keys,
so no padding to the official 40 text tokens and no (P, H, N, N) logits; a pair's text and image rows form one
sequence of tiles (attention_tiles.py), so short text segments do not each waste a tile.  Backward
(attention_bwd.py) follows flash-attention 2: delta = rowsum(dO * O), dk/dv programs over key slots (the bias
gradient summed over pairs in programs, no atomics), dq programs over query tiles.  q, k, v come as one
(T, 3, H, dh) tensor (the qkv projection's output) and their gradient goes back as one.

Limits: head dim 16..128 (padded to a power of two in registers; stored aligned by the caller for 16-byte loads),
fp32/fp16/bf16 with fp32 softmax.  Kernels take plain tensors: vlmo_fast/ops/attention.py adapts the layout.

Order: forward kernel, launcher, custom ops, autograd, public function; shared helpers in attention_tiles.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .attention_bwd import attention_bwd
from .attention_tiles import (Problem, bias_tile, launch, load_rows, pair_rows, prune_query_configs,
                              query_configs, query_tile, store_rows)
from .autocast import compute_dtype
from .tuning import bench_fn


# ----------------------------------------------------------------------------------------------------------
# Triton: forward
# ----------------------------------------------------------------------------------------------------------
# _fwd_kernel: grid (P * cdiv(M, BLOCK_M), H); a program owns BLOCK_M rows of its pair's [text; image] queries.
#   QKV   (T, 3, H, dh) fp32/fp16/bf16, head dim contiguous; Out (T, H, dh) contiguous, q's dtype
#   Lse   (T, H) fp32: log2-sum-exp2 of each row's base-2 logits; Bias (H, M, M) contiguous (dummy without)
#   TextStart, TextQLen, TextKLen, ImageStart, ImageLen (P,) int32; strides in elements; qk_scale = scale*log2(e)
#   len_bucket: the autotune key's pair-length bucket (unused in the body)
@triton.autotune(configs=query_configs(), key=["BLOCK_D", "HAS_BIAS", "len_bucket"], do_bench=bench_fn(),
                 prune_configs_by={"early_config_prune": prune_query_configs})
@triton.jit
def _fwd_kernel(QKV, Out, Lse, Bias, TextStart, TextQLen, TextKLen, ImageStart, ImageLen,
                stride_t, stride_c, stride_h, stride_ot, stride_oh, num_heads, max_text, num_slots, qk_scale,
                scale, len_bucket, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pair, t_start, t_klen, i_start, i_len, q_rows, q_slots, q_mask, live = query_tile(
        TextStart, TextQLen, TextKLen, ImageStart, ImageLen, max_text, num_slots, BLOCK_M)
    if not live:
        return
    h = tl.program_id(1)
    Qh = QKV + h * stride_h
    q = load_rows(Qh, q_rows, q_mask, stride_t, HEAD_DIM, BLOCK_D)
    BiasH = Bias + h.to(tl.int64) * num_slots * num_slots
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(0, t_klen + i_len, BLOCK_N):
        k_rows, k_slots, k_mask = pair_rows(start + tl.arange(0, BLOCK_N), t_start, t_klen, i_start, i_len,
                                            max_text)
        k = load_rows(Qh + stride_c, k_rows, k_mask, stride_t, HEAD_DIM, BLOCK_D)
        v = load_rows(Qh + 2 * stride_c, k_rows, k_mask, stride_t, HEAD_DIM, BLOCK_D)
        # "ieee" matters only for fp32 inputs (no silent TF32); half inputs take the tensor cores either way
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # (BLOCK_M, BLOCK_N), base-2 logits
        if HAS_BIAS:
            s += bias_tile(BiasH, q_slots[:, None], k_slots[None, :], q_mask[:, None] & k_mask[None, :], num_slots)
        s = tl.where(k_mask[None, :], s, float("-inf"))
        # every tile holds at least one real key, so m_new is finite and alpha never sees inf - inf
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    # a row without any key (an empty pair) gives 0 and lse = +inf, so the backward assigns it no weight
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    store_rows(Out + h * stride_oh, q_rows, q_mask, stride_ot, acc / l_safe[:, None], HEAD_DIM, BLOCK_D)
    tl.store(Lse + q_rows * num_heads + h, tl.where(empty, float("inf"), m_i + tl.log2(l_safe)), mask=q_mask)


# ----------------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------------
def attention_fwd(problem: Problem) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel: out (T, H, dh) in qkv's dtype and lse (T, H) fp32 (base 2)."""
    T, _, H, dh = problem.qkv.shape
    out = problem.qkv.new_empty(T, H, dh)
    lse = problem.qkv.new_empty(T, H, dtype=torch.float32)
    if T and problem.num_pairs:
        bias = problem.bias if problem.bias is not None else problem.qkv.new_empty(1)  # never read without
        launch(_fwd_kernel, problem, (problem.qkv, out, lse, bias), "BLOCK_M")
    return out, lse


# ----------------------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile) and autograd
# ----------------------------------------------------------------------------------------------------------
_SEG = "Tensor text_start, Tensor text_q_len, Tensor text_k_len, Tensor image_start, Tensor image_len"
_GEOM = "Tensor? bias, SymInt max_text, SymInt max_image, float scale"


def _problem(qkv, text_start, text_q_len, text_k_len, image_start, image_len, bias, max_text, max_image, scale):
    seg = (text_start, text_q_len, text_k_len, image_start, image_len)
    qkv = qkv.contiguous()  # dqkv takes its strides
    bias = None if bias is None else bias.contiguous()
    return Problem(qkv, seg, max_text, max_image, bias, scale)


@torch.library.custom_op("vlmo_fast::packed_attention_fwd", mutates_args=(),
                         schema=f"(Tensor qkv, {_SEG}, {_GEOM}) -> (Tensor, Tensor)")
def _fwd_op(qkv, text_start, text_q_len, text_k_len, image_start, image_len, bias, max_text, max_image, scale):
    return attention_fwd(_problem(qkv, text_start, text_q_len, text_k_len, image_start, image_len, bias, max_text,
                                  max_image, scale))


@_fwd_op.register_fake
def _fwd_fake(qkv, text_start, text_q_len, text_k_len, image_start, image_len, bias, max_text, max_image, scale):
    T, _, H, dh = qkv.shape
    return qkv.new_empty(T, H, dh), qkv.new_empty(T, H, dtype=torch.float32)


@torch.library.custom_op("vlmo_fast::packed_attention_bwd", mutates_args=(),
                         schema=f"(Tensor dout, Tensor qkv, Tensor out, Tensor lse, {_SEG}, {_GEOM}) "
                                "-> (Tensor, Tensor)")
def _bwd_op(dout, qkv, out, lse, text_start, text_q_len, text_k_len, image_start, image_len, bias, max_text,
            max_image, scale):
    problem = _problem(qkv, text_start, text_q_len, text_k_len, image_start, image_len, bias, max_text, max_image,
                       scale)
    return attention_bwd(problem, dout, out, lse)


@_bwd_op.register_fake
def _bwd_fake(dout, qkv, out, lse, text_start, text_q_len, text_k_len, image_start, image_len, bias, max_text,
              max_image, scale):
    dbias = qkv.new_empty(bias.shape, dtype=torch.float32) if bias is not None else qkv.new_empty(0)
    return qkv.new_empty(qkv.shape), dbias


def _setup_context(ctx, inputs, output):
    qkv, *seg, bias, max_text, max_image, scale = inputs
    ctx.save_for_backward(qkv, output[0], output[1], *seg, bias)
    ctx.geometry = (max_text, max_image, scale)


def _backward(ctx, dout, dlse):
    qkv, out, lse, *seg, bias = ctx.saved_tensors
    dqkv, dbias = _bwd_op(dout, qkv, out, lse, *seg, bias, *ctx.geometry)
    dbias = dbias.to(bias.dtype) if bias is not None and ctx.needs_input_grad[6] else None
    return dqkv, None, None, None, None, None, dbias, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def packed_attention_triton(qkv: Tensor, seg: tuple[Tensor, ...], max_text: int, max_image: int,
                            bias: Tensor | None, scale: float) -> Tensor:
    """The Triton kernel: qkv (T, 3, H, dh) -> (T, H, dh), differentiable in qkv and bias (H, M, M).

    `seg` = (text_start, text_q_len, text_k_len, image_start, image_len), (P,) int32 each; max_text, max_image
    the longest text (query rows) and image segments, M = max_text + max_image.  Logits and softmax are fp32;
    under autocast the operands take its dtype, as a matmul's would.
    """
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"qkv must be (T, 3, H, dh), got {tuple(qkv.shape)}")
    qkv = qkv.to(compute_dtype(qkv))
    if qkv.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"qkv must be fp32, fp16 or bf16, got {qkv.dtype}")
    T, _, H, dh = qkv.shape
    if not 1 <= dh <= 128:
        raise ValueError(f"head dim {dh} outside 1..128")
    M = max_text + max_image
    if bias is not None and tuple(bias.shape) != (H, M, M):
        raise ValueError(f"bias {tuple(bias.shape)} is not ({H}, {M}, {M})")
    if bias is not None:
        bias = bias.to(qkv.dtype)
    out, _ = _fwd_op(qkv, *seg, bias, max_text, max_image, float(scale))
    return out
