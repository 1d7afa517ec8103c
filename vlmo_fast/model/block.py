"""The MoME block (spec 1.3): pre-LN shared self-attention, then one FFN expert per row group."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmo_fast.config import ModelConfig
from vlmo_fast.ops.attention_bias import AttentionBias
from vlmo_fast.ops.expert_ffn import expert_ffn
from vlmo_fast.ops.layout import PackedLayout
from vlmo_fast.ops.self_attention import self_attention

# Expert indices; the order is that of Block.experts().
TEXT_EXPERT, IMAGE_EXPERT, VL_EXPERT = 0, 1, 2


@dataclass(frozen=True)
class LayerInput:
    """What a block needs besides x: the layout, the layer's relative position bias (or None) and the expert of
    each row group (start, end, expert)."""

    layout: PackedLayout
    bias: AttentionBias | None
    groups: list[tuple[int, int, int]]
    drop_path: Tensor | None = None  # (3, P) uniform draws of this layer's stochastic depth (None: none applies)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with q and v biases (no key bias), as the official Attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.scale = cfg.head_dim ** -0.5
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        if cfg.qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(D))
            self.v_bias = nn.Parameter(torch.zeros(D))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(D, D)

    def forward(self, x: Tensor, inp: LayerInput, rows: Tensor | None = None) -> Tensor:
        """x (T, D) packed rows -> (T, D), or only the output rows `rows` (every row is still a key)."""
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        out = self_attention(x, self.qkv.weight, bias, self.num_heads, inp.layout, inp.bias, self.scale, rows)
        return self.proj(out)


class Block(nn.Module):
    """x = x + r1 * gamma_1 * attn(norm1(x)); x = x + r2 * gamma_2 * mlp_e(norm2_e(x)) per row group."""

    def __init__(self, cfg: ModelConfig, layer: int, drop_path: float):
        super().__init__()
        D, hidden = cfg.embed_dim, cfg.mlp_dim
        self.layer = layer
        self.drop_path = drop_path
        self.eps = cfg.layernorm_eps
        self.norm1 = nn.LayerNorm(D, eps=cfg.layernorm_eps)
        self.attn = Attention(cfg)
        self.norm2_text = nn.LayerNorm(D, eps=cfg.layernorm_eps)
        self.norm2_imag = nn.LayerNorm(D, eps=cfg.layernorm_eps)
        self.mlp_text = Mlp(D, hidden)
        self.mlp_imag = Mlp(D, hidden)
        self.has_vl = layer >= cfg.vl_start
        if self.has_vl:
            self.mlp_vl = Mlp(D, hidden)
            self.norm2_vl = nn.LayerNorm(D, eps=cfg.layernorm_eps)
        if cfg.layer_scale is not None:
            self.gamma_1 = nn.Parameter(torch.full((D,), float(cfg.layer_scale)))
            self.gamma_2 = nn.Parameter(torch.full((D,), float(cfg.layer_scale)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def experts(self) -> list[tuple[Tensor, ...]]:
        """Expert weights in the order TEXT_EXPERT, IMAGE_EXPERT (, VL_EXPERT)."""
        pairs = [(self.norm2_text, self.mlp_text), (self.norm2_imag, self.mlp_imag)]
        if self.has_vl:
            pairs.append((self.norm2_vl, self.mlp_vl))
        return [(n.weight, n.bias, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias) for n, m in pairs]

    def _row_scales(self, inp: LayerInput, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Stochastic depth as timm's DropPath decides it, from the layer's draws: a keep decision per pair for the
        attention branch, and for the FFN one per pair and row group (the official split FFN calls DropPath
        separately on text and image); kept rows are rescaled by 1/keep.  Returns per-row scales (r1, r2)."""
        if not self.training or self.drop_path == 0.0:
            return None, None
        draws = inp.drop_path
        if draws is None:  # a caller that brought no draws (the drop-in surface): the global generator
            draws = torch.rand(3, inp.layout.num_pairs, device=x.device)
        keep = 1.0 - self.drop_path
        scale = (keep + draws.to(x.dtype)).floor_() / keep  # (3, P)
        pair = inp.layout.row_pair.long()
        r2 = torch.cat([scale[1 + g][pair[start:end]] for g, (start, end, _) in enumerate(inp.groups)])
        return scale[0][pair], r2

    def forward(self, x: Tensor, inp: LayerInput, out_rows: Tensor | None = None) -> Tensor:
        """One block over packed rows x (T, D).  With out_rows (and one row group, as in every last layer) only
        those rows are computed past the attention and returned, (R, D) in their order (the others are never read:
        only [CLS] rows feed ITC, ITM, VQA and NLVR2, only the masked tokens feed MLM)."""
        wanted = out_rows
        if out_rows is not None and len(inp.groups) != 1:
            out_rows = None  # a split layer would need per-group row counts; compute every row, then pick
        rows = slice(None) if out_rows is None else out_rows
        h = self.attn(F.layer_norm(x, (x.shape[-1],), self.norm1.weight, self.norm1.bias, self.eps), inp, out_rows)
        if self.gamma_1 is not None:
            h = self.gamma_1 * h
        r1, r2 = self._row_scales(inp, x)
        xs = x if out_rows is None else x.index_select(0, out_rows)
        xs = xs + (h if r1 is None else h * r1[rows][:, None])
        groups = inp.groups if out_rows is None else [(0, xs.shape[0], inp.groups[0][2])]
        out = expert_ffn(xs, groups, self.experts(), self.gamma_2, None if r2 is None else r2[rows], self.eps)
        return out if wanted is None or out_rows is not None else out.index_select(0, wanted)
