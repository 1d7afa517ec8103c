"""The model, batch and negatives shared by the DDP worker and the single-process reference."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from vlmo_fast.config import ModelConfig
from vlmo_fast.model.vlmo import VLMo

GLOBAL_BATCH = 8
SUPERVISED_PER_CAPTION = 2  # equal MLM token counts per rank, so the mean of rank means is the global mean


def build_model() -> VLMo:
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=32, depth=2, num_heads=2, vl_start=1, image_size=32, max_text_len=10,
                      vocab_size=200, drop_path_rate=0.0)
    return VLMo(cfg).train()


def global_batch(cfg: ModelConfig) -> dict:
    g = torch.Generator().manual_seed(1)
    B, L = GLOBAL_BATCH, cfg.max_text_len
    lens = torch.randint(5, L + 1, (B,), generator=g)
    real = torch.arange(L)[None] < lens[:, None]
    ids = torch.randint(1000 % cfg.vocab_size, cfg.vocab_size, (B, L), generator=g) * real
    ids[:, 0] = 101 % cfg.vocab_size
    labels = torch.full_like(ids, -100)
    labels[:, 1:1 + SUPERVISED_PER_CAPTION] = ids[:, 1:1 + SUPERVISED_PER_CAPTION]
    ids_mlm = ids.clone()
    ids_mlm[:, 1:1 + SUPERVISED_PER_CAPTION] = 103
    return {"text_ids": ids, "text_masks": real.long(), "text_lens": lens, "text_ids_mlm": ids_mlm,
            "text_labels_mlm": labels, "text_labels": torch.full_like(ids, -100),
            "image": [torch.rand(B, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1]}


def shard(batch: dict, rank: int, world: int) -> dict:
    B = GLOBAL_BATCH // world
    return {k: ([v[0][rank * B:(rank + 1) * B]] if isinstance(v, list) else v[rank * B:(rank + 1) * B])
            for k, v in batch.items()}


def global_negatives() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed negatives (indices into the concatenated batch, never the sample itself)."""
    B = GLOBAL_BATCH
    return (torch.arange(B) + 3) % B, (torch.arange(B) * 5 + 1) % B


def to_local_first(index: torch.Tensor, rank: int, world: int, per_rank: int) -> torch.Tensor:
    """Concatenated-order indices -> the local-first order of gather_local_first on `rank`."""
    owner, row = index // per_rank, index % per_rank
    others = [r for r in range(world) if r != rank]
    pos = torch.tensor([0 if o == rank else 1 + others.index(o) for o in owner.tolist()])
    return pos * per_rank + row


REPO = Path(__file__).resolve().parents[2]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # --standalone: a local rendezvous on a port torchrun picks itself (no race for a free port)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
