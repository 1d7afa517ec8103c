"""Task heads with the official module structure and state-dict names (spec section 3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Pooler(nn.Module):
    """tanh(dense(x[:, 0])) for padded (B, N, D) input, or tanh(dense(x)) for (B, D) [CLS] rows."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0] if x.dim() == 3 else x))


class ITMHead(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class ITCHead(nn.Module):
    """Projection (no bias) of a [CLS] feature for the contrastive losses."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class MLMTransform(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder (not tied to the word embeddings) + bias."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.transform = MLMTransform(dim)
        self.decoder = nn.Linear(dim, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x)) + self.bias


def classifier(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """The VQA / NLVR2 classifier: Linear, LayerNorm (eps 1e-5), GELU, Linear (keys .0, .1, .3)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_dim))


def l2_normalize(x: Tensor) -> Tensor:
    """x / ||x|| over the last dim in fp32, as the official ITC features (no epsilon: a zero feature is a bug
    upstream)."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)
