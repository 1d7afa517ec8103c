"""Pieces shared by the packed-attention kernels (attention.py forward, attention_bwd.py backward): the tile
decode of a program, the relative-position bias of a tile, the autotune configs and their pruning rules.

Tiling: a program owns BLOCK rows of one segment (the text or the image of one pair) and walks the keys (or
queries) of its own pair in tiles of the other block size.  Every matmul's M dimension is the owned block, so on
Hopper a block of at least 64 rows compiles to wgmma (32-row blocks fall back to mma.sync); the walked block
may be small.  The pruning rules keep, per dtype and head dim, only configs that compile for sm_90 within the
227 KB of shared memory a block may use, without register spills, and (bf16/fp16) with wgmma: they are
derived from the resource table of `python -m vlmo_fast.kernels.aot` (benchmarks/results/sm90_resources.md),
and a test compiles every kept config to check them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .relpos import num_image_rows, table_rows
from .tuning import pick_configs

LOG2E = tl.constexpr(1.4426950408889634)  # softmax runs in base 2: exp2 is one instruction, exp is not


def _config(block_m: int, block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


# Forward and dq: a program owns BLOCK_M query rows and walks BLOCK_N keys at a time.  fp32 (IEEE dots on the
# FMA units, a test and reference path on GPUs) takes the last, smallest config only.
QUERY_CONFIGS = [_config(*c) for c in ((128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2))]
# dk/dv: a program owns BLOCK_N key rows and walks BLOCK_M queries at a time (Triton's fused-attention
# tutorial and FlashAttention-2 order the backward the same way: the owned block is the MMA's M).
KEY_CONFIGS = [_config(*c) for c in ((32, 128, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 2),
                                     (16, 128, 8, 2), (16, 64, 4, 2))]
# The interpreter's single tile: small, so that tests on tiny shapes cover several tiles per segment.
INTERPRET_CONFIGS = [_config(16, 16, 1, 1)]


def query_configs() -> list[triton.Config]:
    return pick_configs(QUERY_CONFIGS, INTERPRET_CONFIGS)


def key_configs() -> list[triton.Config]:
    return pick_configs(KEY_CONFIGS, INTERPRET_CONFIGS)


def _half_fits(c: triton.Config, head_dim: int, block: int, has_bias: bool, key_tiles: bool) -> bool:
    """bf16/fp16 on sm_90, read from the resource table: registers are what binds.  The bias gather and a head
    dim padded in registers (34 in 64, masked loads) each cost registers; a config that would spill is left
    out.  All configs own at least 64 rows, so every matmul is a wgmma."""
    aligned = head_dim == block and block <= 64
    if key_tiles:  # dk/dv: the walked query block, which sets the size of the transposed score tiles
        walked = c.kwargs["BLOCK_M"]
        return walked <= (32 if aligned else 16) if has_bias else walked <= (64 if aligned else 32)
    return c.kwargs["BLOCK_N"] == 32 or (not has_bias and block <= 64)


def _prune(configs: list[triton.Config], named_args: dict, key_tiles: bool, **kwargs) -> list[triton.Config]:
    block = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM", block))
    has_bias = kwargs.get("HAS_BIAS", named_args.get("HAS_BIAS", True))
    q = named_args.get("Q")
    if len(configs) == 1 or q is None or q.dtype == torch.float32:
        return configs[-1:]
    kept = [c for c in configs if _half_fits(c, head_dim, block, has_bias, key_tiles)]
    return kept or configs[-1:]


def prune_query_configs(configs, named_args, **kwargs):
    return _prune(configs, named_args, key_tiles=False, **kwargs)


def prune_key_configs(configs, named_args, **kwargs):
    return _prune(configs, named_args, key_tiles=True, **kwargs)


def block_d(head_dim: int) -> int:
    """Head dim padded to a power of two, at least 16 (the smallest tl.dot operand)."""
    return max(16, triton.next_power_of_2(head_dim))


def rows_major(t: Tensor) -> Tensor:
    """The kernels stride over rows and heads but need the head dim contiguous."""
    return t if t.stride(-1) == 1 else t.contiguous()


def head_columns(table: Tensor) -> Tensor:
    """The kernels step one column per head (TableH = Table + h)."""
    return table if table.stride(1) == 1 else table.contiguous()


def geometry(table: Tensor | None, window: int, l0: int) -> tuple[int, int]:
    """(NRD, R) of the table, or zeros without a bias."""
    return (num_image_rows(window), table_rows(window, l0)) if table is not None else (0, 0)


# _segment_tile: which rows program_id(0) owns.  Each pair is cut into tiles of BLOCK rows, first over its text
# segment (TextLen rows, padded to max_text tiles), then over its image segment (max_image).  Returns the pair,
# whether the tile is text, its first in-segment position, and the segment's first row and length.
@triton.jit
def segment_tile(TextStart, TextLen, ImageStart, ImageLen, max_text, max_image, BLOCK: tl.constexpr):
    n_text = tl.cdiv(max_text, BLOCK)
    per_pair = n_text + tl.cdiv(max_image, BLOCK)
    pair = tl.program_id(0) // per_pair
    tile = tl.program_id(0) % per_pair
    is_text = tile < n_text
    pos0 = tl.where(is_text, tile, tile - n_text) * BLOCK
    seg_start = tl.where(is_text, tl.load(TextStart + pair), tl.load(ImageStart + pair))
    seg_len = tl.where(is_text, tl.load(TextLen + pair), tl.load(ImageLen + pair))
    return pair, is_text, pos0, seg_start, seg_len


# load_rows: a (len(rows), BLOCK_D) tile of rows `rows` (int64) of a (T, ., dh) tensor at Ptr (one head's start),
# rows `stride` apart, masked to real rows and the first HEAD_DIM columns.
@triton.jit
def load_rows(Ptr, rows, row_mask, stride, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    return tl.load(Ptr + rows[:, None] * stride + offs_d[None, :], mask=mask, other=0.0)


# _cls_rows: a segment's [CLS] (position 0) reads its own rows, the last three of the segment's block of the table
# (block_end - 3: [CLS] query, - 2: [CLS] key, - 1: both); other entries keep `row`.
@triton.jit
def _cls_rows(row, q_pos, k_pos, block_end):
    q0 = q_pos == 0
    k0 = k_pos == 0
    row = tl.where(q0, block_end - 3, row)
    row = tl.where(k0, block_end - 2, row)
    return tl.where(q0 & k0, block_end - 1, row)


# bias: the relative-position bias of broadcastable in-segment positions q_pos and k_pos (int32; e.g. (M, 1)
# and (1, N) for a query-major tile, (1, M) and (N, 1) for a key-major one), read from one head's column of the
# table at TableH (rows `stride_tr` apart), fp32.  `mask` marks real entries (the others may index outside the
# table).  window, l0, nrd, num_rows: the table geometry of kernels/relpos.py (W, L0, NRD, R).  Q_TEXT, K_TEXT
# are compile-time: cross-modal tiles read a single table entry.
@triton.jit
def bias(TableH, q_pos, k_pos, mask, stride_tr, window, l0, nrd, num_rows,
         Q_TEXT: tl.constexpr, K_TEXT: tl.constexpr):
    if Q_TEXT and K_TEXT:
        row = _cls_rows(nrd + l0 + (k_pos - q_pos), q_pos, k_pos, num_rows)
        b = tl.load(TableH + row.to(tl.int64) * stride_tr, mask=mask, other=0.0).to(tl.float32)
    elif Q_TEXT:
        b = tl.load(TableH + nrd * stride_tr).to(tl.float32)  # text query -> image key: one row
    elif K_TEXT:
        b = tl.load(TableH + (nrd + 1) * stride_tr).to(tl.float32)  # image query -> text key: one row
    else:
        # patch position 1 + r*W + c; the image [CLS] (position 0) has its own rows
        q_r = (q_pos - 1) // window
        q_c = (q_pos - 1) - q_r * window
        k_r = (k_pos - 1) // window
        k_c = (k_pos - 1) - k_r * window
        row = _cls_rows((q_r - k_r + window - 1) * (2 * window - 1) + (q_c - k_c + window - 1), q_pos, k_pos, nrd)
        b = tl.load(TableH + row.to(tl.int64) * stride_tr, mask=mask, other=0.0).to(tl.float32)
    return b
