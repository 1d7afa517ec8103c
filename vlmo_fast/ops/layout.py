"""The packed modality-major token layout (design.md, "The packed layout").

A batch of P pairs becomes one token matrix x (T, D):

    [ text of pair 0 | ... | text of pair P-1 | image of pair 0 | ... | image of pair P-1 ]

Each text segment holds `text_q_len[p]` query rows of which the first `text_k_len[p]` are real tokens (also
keys); the rest are padded rows kept only so that the drop-in surface can return every padded position (they
attend but are never attended to).  A text-only pass has image_len == 0, an image-only pass text lengths 0.
The Python ints (row counts and maxima) are known when the layout is built, so kernels size their launch
grids without reading the device.  The kernels take the plain tensors of this record (vlmo_fast/ops/attention.py
adapts it), never the record itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PackedLayout:
    text_start: Tensor   # (P,) int32, first row of pair p's text segment
    text_q_len: Tensor   # (P,) int32, query rows of the segment (real tokens + padded rows kept as queries)
    text_k_len: Tensor   # (P,) int32, real tokens of the segment (the keys); <= text_q_len
    image_start: Tensor  # (P,) int32, first row of pair p's image segment
    image_len: Tensor    # (P,) int32, image tokens of pair p (0 in a text-only pass)
    row_pair: Tensor     # (T,) int32, the pair each row belongs to
    num_text_rows: int   # rows [0, num_text_rows) are text, [num_text_rows, num_rows) image
    num_rows: int
    max_text_q: int      # max(text_q_len), for launch grids
    max_image: int       # max(image_len)

    @property
    def num_pairs(self) -> int:
        return self.text_start.shape[0]

    @property
    def device(self) -> torch.device:
        return self.text_start.device
