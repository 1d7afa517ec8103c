"""Text and image embeddings (spec 1.2), computed directly on packed rows."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from vlmo_fast.config import ModelConfig


class TextEmbeddings(nn.Module):
    """BERT embeddings as the official code uses them: word + token type 0 (+ absolute position for base_plus),
    LayerNorm (eps 1e-12) and dropout with p = drop_path_rate.  Keys match HF BertEmbeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.embed_dim
        self.word_embeddings = nn.Embedding(cfg.vocab_size, D, padding_idx=0)
        # The table exists in every official checkpoint; only base_plus reads it.
        self.position_embeddings = nn.Embedding(cfg.max_text_len, D)
        self.token_type_embeddings = nn.Embedding(2, D)
        self.LayerNorm = nn.LayerNorm(D, eps=1e-12)
        self.dropout_rate = cfg.drop_path_rate
        self.use_positions = cfg.abs_pos_emb
        # Persistent as in the transformers release the official code pins, so state dicts match key for key.
        self.register_buffer("position_ids", torch.arange(cfg.max_text_len).unsqueeze(0), persistent=True)

    def forward(self, ids: Tensor, positions: Tensor, keep: Tensor | None = None) -> Tensor:
        """ids, positions: (N,) token ids and in-segment positions -> (N, D).  In training, dropout keeps the
        elements where the 0/1 mask `keep` (N, D) is 1 (drawn here from the global generator when not given)."""
        e = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]
        if self.use_positions:
            e = e + self.position_embeddings(positions)
        e = self.LayerNorm(e)
        p = self.dropout_rate
        if not self.training or p == 0.0:
            return e
        if keep is None:
            keep = torch.empty_like(e).bernoulli_(1.0 - p)
        return e * keep.to(e.dtype).div(1.0 - p)  # as torch's CPU dropout: the mask scaled, then multiplied


class PatchEmbed(nn.Module):
    """Conv2d patchify; images must have the configured size (as the official PatchEmbed asserts)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.image_size = cfg.image_size
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, W*W, D)."""
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (self.image_size,) * 2:
            raise ValueError(f"expected images of shape (B, 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(images.shape)}")
        return self.proj(images).flatten(2).transpose(1, 2)


def image_tokens(patch_embed: PatchEmbed, cls_token: Tensor, pos_embed: Tensor | None, images: Tensor) -> Tensor:
    """(B, 3, S, S) -> (B, Ni, D): [image CLS; patches] (+ absolute positions for base_plus)."""
    x = patch_embed(images)
    x = torch.cat([cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
    return x if pos_embed is None else x + pos_embed
