"""What the packed-attention kernels (attention.py forward, attention_bwd.py backward) share: how a program's
tile maps to rows, the tile loads, the autotune configs and their pruning, the launch, and the tile-work count.

Tiling.  A pair's query rows are tiled as one sequence, its text rows then its image rows ([text; image], the
two segments indexed by one tile), and its keys the same way, so a pair of 20 text and 197 image rows fills
217 of 256 rows instead of padding 20 rows to a whole tile and 197 to 256.  Forward and dq programs own BLOCK_M
query rows of one pair and walk the pair's keys BLOCK_N at a time.  dk/dv programs own BLOCK_N key *slots* of
the dense per-pair form [text(max_text); image(max_image)] for a chunk of pairs and walk each pair's queries:
owning slots rather than a pair's keys is what lets a program add the bias gradient of its pairs into its own
columns of a per-chunk buffer without atomics.  Every matmul's M dimension is the owned block, so on Hopper a
block of at least 64 rows compiles to wgmma (32-row blocks fall back to mma.sync).

The bias is a dense (H, M, M) tensor (M = max_text + max_image slots) read as 2-D tiles beside K/V; slot of
text position i = i, of image position j = max_text + j.  Pruning keeps, per dtype and head dim, only configs
that compile for sm_90 within 227 KB of shared memory, without spills, with wgmma: derived from
`python -m vlmo_fast.kernels.aot` (benchmarks/results/sm90_resources.md); a test compiles every kept config.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .tuning import pick_configs

LOG2E = tl.constexpr(1.4426950408889634)  # softmax runs in base 2: exp2 is one instruction, exp is not


def _config(block_m: int, block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


# Forward and dq: a program owns BLOCK_M query rows and walks BLOCK_N keys at a time.  fp32 (IEEE dots on the
# FMA units, a test and reference path on GPUs) takes the last config only.
QUERY_CONFIGS = [_config(*c) for c in ((128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2))]
# dk/dv: a program owns BLOCK_N key slots and walks BLOCK_M queries at a time (the owned block is the MMA's M).
KEY_CONFIGS = [_config(*c) for c in ((32, 128, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 2),
                                     (16, 128, 8, 2), (16, 64, 4, 2))]
# The interpreter's single tile: small, so that tests on tiny shapes cover several tiles per pair.
INTERPRET_CONFIGS = [_config(16, 16, 1, 1)]


def query_configs() -> list[triton.Config]:
    return pick_configs(QUERY_CONFIGS, INTERPRET_CONFIGS)


def key_configs() -> list[triton.Config]:
    return pick_configs(KEY_CONFIGS, INTERPRET_CONFIGS)


def _half_fits(c: triton.Config, block: int, has_bias: bool, key_tiles: bool) -> bool:
    """bf16/fp16 on sm_90, read from the resource table.  Forward and dq fit everywhere (at most 162 registers).
    dk/dv keeps two (BLOCK_N, BLOCK_D) accumulators, and with a bias the bias tile and its gradient's partial
    sum: the walked query block is what must stay small (64 spills with a bias, and at head dim 128)."""
    if not key_tiles:
        return True
    walked = c.kwargs["BLOCK_M"]
    if block > 64:  # 16 x 64 on 4 warps spills 92 B with a bias
        return walked <= 16 and (c.num_warps == 8 or not has_bias)
    if has_bias:  # 32 x 128 on 8 warps: 254 registers under Triton 3.6, 32 B spilled under 3.9
        return walked <= 16 or (walked == 32 and c.num_warps == 4)
    return walked <= 64


def _prune(configs: list[triton.Config], named_args: dict, key_tiles: bool, **kwargs) -> list[triton.Config]:
    block = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    has_bias = kwargs.get("HAS_BIAS", named_args.get("HAS_BIAS", True))
    qkv = named_args.get("QKV")
    if len(configs) == 1 or qkv is None or qkv.dtype == torch.float32:
        return configs[-1:]
    kept = [c for c in configs if _half_fits(c, block, has_bias, key_tiles)]
    return kept or configs[-1:]


def prune_query_configs(configs, named_args, **kwargs):
    return _prune(configs, named_args, key_tiles=False, **kwargs)


def prune_key_configs(configs, named_args, **kwargs):
    return _prune(configs, named_args, key_tiles=True, **kwargs)


def block_d(head_dim: int) -> int:
    """Head dim padded to a power of two, at least 16 (the smallest tl.dot operand)."""
    return max(16, triton.next_power_of_2(head_dim))


def length_bucket(num_slots: int) -> int:
    """The autotune key's bucket of the pair length: a text-only pass (~20 rows) and a 480 px pass (~940) tune
    apart."""
    return max(16, triton.next_power_of_2(num_slots))


# ----------------------------------------------------------------------------------------------------------
# Shared jit helpers
# ----------------------------------------------------------------------------------------------------------
# pair_segments: the five (P,) int32 layout scalars of one pair: text start, text query rows, text keys,
# image start, image rows.
@triton.jit
def pair_segments(pair, TextStart, TextQLen, TextKLen, ImageStart, ImageLen):
    return (tl.load(TextStart + pair), tl.load(TextQLen + pair), tl.load(TextKLen + pair),
            tl.load(ImageStart + pair), tl.load(ImageLen + pair))


# pair_rows: positions `pos` of a pair read as one sequence [text (t_len rows); image (i_len rows)] ->
# packed rows (int64), dense slots (int32) and the mask of positions inside the sequence.
@triton.jit
def pair_rows(pos, t_start, t_len, i_start, i_len, max_text):
    is_text = pos < t_len
    rows = tl.where(is_text, t_start + pos, i_start + pos - t_len).to(tl.int64)
    slots = tl.where(is_text, pos, max_text + pos - t_len)
    return rows, slots, pos < t_len + i_len


# query_tile: the prologue of forward and dq programs, grid (P * cdiv(num_slots, BLOCK), H): the pair, its
# segments, and the owned query rows; `live` is false for a tile past the pair's last query (it returns at once).
@triton.jit
def query_tile(TextStart, TextQLen, TextKLen, ImageStart, ImageLen, max_text, num_slots, BLOCK: tl.constexpr):
    tiles = tl.cdiv(num_slots, BLOCK)
    pair = tl.program_id(0) // tiles
    first = (tl.program_id(0) % tiles) * BLOCK
    t_start, t_qlen, t_klen, i_start, i_len = pair_segments(pair, TextStart, TextQLen, TextKLen, ImageStart,
                                                            ImageLen)
    rows, slots, mask = pair_rows(first + tl.arange(0, BLOCK), t_start, t_qlen, i_start, i_len, max_text)
    return pair, t_start, t_klen, i_start, i_len, rows, slots, mask, first < t_qlen + i_len


# load_rows / store_rows: a (len(rows), BLOCK_D) tile of rows `rows` (int64) of a tensor at Ptr (one head's
# start), rows `stride` apart, masked to the rows in row_mask and the first HEAD_DIM columns (a compile-time
# mask, gone when the head dim is stored aligned: HEAD_DIM == BLOCK_D).
@triton.jit
def load_rows(Ptr, rows, row_mask, stride, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    return tl.load(Ptr + rows[:, None] * stride + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def store_rows(Ptr, rows, row_mask, stride, value, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(Ptr + rows[:, None] * stride + offs_d[None, :], value.to(Ptr.dtype.element_ty), mask=mask)


# bias_tile: the dense bias of one head (BiasH: (M, M), row-major) at broadcastable query and key slots, fp32,
# scaled to base 2; masked entries read 0.
@triton.jit
def bias_tile(BiasH, q_slots, k_slots, mask, num_slots):
    return tl.load(BiasH + q_slots * num_slots + k_slots, mask=mask, other=0.0).to(tl.float32) * LOG2E


# ----------------------------------------------------------------------------------------------------------
# The problem every launch shares, and the launch
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """Plain tensors and ints of one attention call.  qkv (T, 3, H, dh) with the head dim contiguous; `seg` the
    five (P,) int32 layout tensors (text_start, text_q_len, text_k_len, image_start, image_len); out-like tensors
    (T, H, dh) contiguous; bias (H, M, M) contiguous or None."""

    qkv: Tensor
    seg: tuple[Tensor, ...]
    max_text: int
    max_image: int
    bias: Tensor | None
    scale: float

    @property
    def num_slots(self) -> int:
        return self.max_text + self.max_image

    @property
    def num_pairs(self) -> int:
        return self.seg[0].shape[0]

    def shared_args(self) -> tuple:
        """The trailing arguments of every attention kernel, in their order."""
        T, _, H, dh = self.qkv.shape
        return (*self.seg, self.qkv.stride(0), self.qkv.stride(1), self.qkv.stride(2), H * dh, dh, H,
                self.max_text, self.num_slots, self.scale * 1.4426950408889634, self.scale,
                length_bucket(self.num_slots))

    def meta(self) -> dict:
        dh = self.qkv.shape[-1]
        return dict(HEAD_DIM=dh, BLOCK_D=block_d(dh), HAS_BIAS=self.bias is not None)


def launch(kernel, problem: Problem, own: tuple, block: str, groups: int | None = None) -> None:
    """kernel[grid](*own, *problem.shared_args(), **problem.meta()), grid (groups * cdiv(M, meta[block]), H):
    `groups` is the pairs (one program row per pair, the default) or the chunks of pairs of the dk/dv kernel."""
    H, M = problem.qkv.shape[2], problem.num_slots
    count = problem.num_pairs if groups is None else groups

    def grid(meta):
        return (count * triton.cdiv(M, meta[block]), H)

    kernel[grid](*own, *problem.shared_args(), **problem.meta())


# ----------------------------------------------------------------------------------------------------------
# Tile work: the fraction of the computed tiles that is real (query, key) work
# ----------------------------------------------------------------------------------------------------------
def _cdiv_up(n: Tensor, block: int) -> Tensor:
    return (n + block - 1) // block * block


def tile_work(text_q_len: Tensor, text_k_len: Tensor, image_len: Tensor, max_text: int, query_tiles: tuple,
              key_tiles: tuple) -> dict[str, float]:
    """Real and computed (query x key) entries of the forward, dq and dk/dv programs for one layout, with
    (BLOCK_M, BLOCK_N) = query_tiles for forward and dq and key_tiles for dk/dv; returns the useful fractions
    {"forward", "dq", "dkdv", "backward"}.  A tile counts whole once its program computes it."""
    tq, tk, il = (t.long().cpu() for t in (text_q_len, text_k_len, image_len))
    lq, lk = tq + il, tk + il
    real = float((lq * lk).sum())
    bm, bn = query_tiles
    fwd = float((_cdiv_up(lq, bm) * _cdiv_up(lk, bn)).sum())
    # dk/dv: slot tiles of key_tiles[1] over [text(max_text); image]; a tile computes for a pair holding a key in it
    km, kn = key_tiles
    M = max_text + int(il.max()) if il.numel() else max_text
    starts = torch.arange(0, M, kn)
    ends = starts + kn
    text_keys = (starts[None, :] < tk[:, None]) & (starts[None, :] < max_text)
    image_keys = (ends[None, :] > max_text) & (starts[None, :] < max_text + il[:, None]) & (il[:, None] > 0)
    key_tiles_used = (text_keys | image_keys).sum(1)
    dkdv = float((key_tiles_used * kn * _cdiv_up(lq, km)).sum())
    frac = (lambda c: real / c if c else 1.0)
    return {"forward": frac(fwd), "dq": frac(fwd), "dkdv": frac(dkdv), "backward": frac((fwd + dkdv) / 2)}
