"""`vlmo-fast bench tiles`: how much of the attention kernels' tile work is real at VLMo-base shapes.

A fused batch of `--batch` pairs, captions drawn from 8 to 40 tokens, `--image` px images (patch 16: 197, 577
and 901 image rows at 224, 384 and 480 px); for every config the bf16 autotuners keep at `--head-dim`, the
fraction of the computed (query x key) tile entries that are real, forward and backward
(kernels/attention_tiles.py `tile_work`).  Prints one JSON line; `useful_fraction` is the smallest over the kept
configs and the passes, i.e. what the worst choice of the autotuner gives.  Needs triton (CPU is enough: nothing
is launched).
"""
from __future__ import annotations

import argparse
import json

import torch

from vlmo_fast.ops.layout import PackedLayout
from vlmo_fast.ops.packing import make_layout


def caption_layout(batch: int, image_size: int, patch: int = 16, seed: int = 0) -> PackedLayout:
    """A fused layout of `batch` pairs: caption lengths uniform in 8..40, one [CLS] plus the patches per image."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(8, 41, (batch,), generator=g, dtype=torch.int32)
    return make_layout(lens, (image_size // patch) ** 2 + 1, None)


def kept_configs(head_dim: int, has_bias: bool) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(BLOCK_M, BLOCK_N) of the query-tile and key-tile configs the bf16 autotuners keep at this head dim."""
    from vlmo_fast.kernels import attention_tiles as tiles

    qkv = torch.empty(0, 3, 1, head_dim, dtype=torch.bfloat16, device="meta")
    args = {"QKV": qkv, "BLOCK_D": tiles.block_d(head_dim), "HAS_BIAS": has_bias}

    def blocks(configs):
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in configs]

    return (blocks(tiles.prune_query_configs(tiles.QUERY_CONFIGS, args)),
            blocks(tiles.prune_key_configs(tiles.KEY_CONFIGS, args)))


def useful_fractions(layout: PackedLayout, query_blocks: list, key_blocks: list) -> list[dict]:
    """One record per (query config, key config): its forward, dq, dk/dv and backward fractions."""
    from vlmo_fast.kernels.attention_tiles import tile_work

    out = []
    for qb in query_blocks:
        for kb in key_blocks:
            work = tile_work(layout.text_q_len, layout.text_k_len, layout.image_len, layout.max_text_q, qb, kb)
            out.append({"query_tiles": list(qb), "key_tiles": list(kb), **{k: round(v, 4) for k, v in work.items()}})
    return out


def run_tiles_bench(args: argparse.Namespace) -> int:
    layout = caption_layout(args.batch, args.image, seed=args.seed)
    query_blocks, key_blocks = kept_configs(args.head_dim, not args.no_bias)
    records = useful_fractions(layout, query_blocks, key_blocks)
    worst = min(min(r["forward"], r["backward"]) for r in records)
    print(json.dumps({"bench": "tiles", "image": args.image, "image_rows": int(layout.max_image),
                      "batch": args.batch, "head_dim": args.head_dim, "bias": not args.no_bias,
                      "useful_fraction": round(worst, 4), "configs": records}), flush=True)
    return 0


def add_tiles_bench_parser(sub) -> argparse.ArgumentParser:
    q = sub.add_parser("tiles", help="fraction of the attention kernels' tile work that is real (no GPU needed)")
    q.add_argument("--image", type=int, default=224, help="image size in pixels (patch 16)")
    q.add_argument("--batch", type=int, default=32)
    q.add_argument("--head-dim", type=int, default=64)
    q.add_argument("--no-bias", action="store_true", help="the configs kept without a relative position bias")
    q.add_argument("--seed", type=int, default=0)
    return q
