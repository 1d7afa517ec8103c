"""The multiway transformer backbone: patch embedding, image [CLS], blocks and the shared final norm."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vlmo_fast.config import ModelConfig
from .block import Block, LayerInput
from .embeddings import PatchEmbed, image_tokens


class MultiWayTransformer(nn.Module):
    """Holds the backbone under its official names (transformer.blocks.{i}, transformer.norm, ...)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_image_tokens, D)) if cfg.abs_pos_emb else None
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(Block(cfg, i, dpr[i]) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=cfg.layernorm_eps)
        self.activation_checkpointing = False  # recompute each block in the backward instead of storing it

    def visual_embed(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, Ni, D) image tokens before the modality embedding."""
        return image_tokens(self.patch_embed, self.cls_token, self.pos_embed, images)

    def run_blocks(self, x: Tensor, inputs: list[LayerInput], start: int, hidden: list[Tensor] | None,
                   out_rows: Tensor | None = None) -> Tensor:
        """Blocks start .. start+len(inputs)-1 over packed rows x (T, D); appends each output to `hidden`.
        out_rows: the rows whose output of the LAST of these blocks is read; that block returns only them (R, D)."""
        for i, inp in enumerate(inputs):
            blk = self.blocks[start + i]
            rows = out_rows if i == len(inputs) - 1 else None
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # drop path takes its decisions from inp's draws, so the recomputation repeats them
                x = checkpoint(blk, x, inp, rows, use_reentrant=False)
            else:
                x = blk(x, inp, rows)
            if hidden is not None:
                hidden.append(x)
        return x
