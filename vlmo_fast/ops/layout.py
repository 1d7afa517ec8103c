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

from dataclasses import dataclass, fields, replace

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

    def _map(self, fn) -> "PackedLayout":
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})

    def to(self, device: torch.device, non_blocking: bool = False) -> "PackedLayout":
        """The layout's tensors on `device` (planned on the host by the data loader, moved with the batch)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PackedLayout":
        """Pinned copies (the DataLoader's pin_memory calls this), so the move to the GPU is asynchronous."""
        return self._map(Tensor.pin_memory)

    def with_text_keys(self, text_k_len: Tensor) -> "PackedLayout":
        """The same rows with other real-token counts (e.g. the hard-negative captions' lengths, known only on
        the device once the negatives are drawn; each must fit its segment's query rows)."""
        return replace(self, text_k_len=text_k_len.to(torch.int32))
