"""The relative-position rule of VLMo (spec 1.4): which row of the bias table a (query, key) pair reads.

One table (R, H * depth) serves every layer (layer l reads columns [l*H, (l+1)*H)).  The row depends only on
the modality and the in-segment position of the query and of the key, so the layer's bias is gathered once per step
into a dense (H, M, M) tile source (vlmo_fast/ops/attention_bias.py) that the attention kernels load.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

TEXT, IMAGE = 0, 1


def num_image_rows(window: int) -> int:
    """NRD: image patch<->patch rows (2W-1)^2 plus the three image-CLS rows."""
    return (2 * window - 1) ** 2 + 3


def table_rows(window: int, l0: int) -> int:
    """R = NRD + 2*L0 + 2, the rows of the whole table for a W x W patch grid and text positions L0."""
    return num_image_rows(window) + 2 * l0 + 2


def rows_after_patch_grid(l0: int) -> int:
    """The table's rows after its (2W-1)^2 patch<->patch rows (image [CLS], cross-modal and text rows)."""
    return table_rows(1, l0) - 1


def window_of_table(rows: int, l0: int) -> int | None:
    """The patch-grid side W whose table has `rows` rows (the inverse of table_rows), or None if none has."""
    grid = rows - rows_after_patch_grid(l0)
    side = math.isqrt(grid) if grid > 0 else 0
    return (side + 1) // 2 if side % 2 == 1 and table_rows((side + 1) // 2, l0) == rows else None


def relpos_index(q_mod: Tensor, q_pos: Tensor, k_mod: Tensor, k_pos: Tensor, window: int, l0: int) -> Tensor:
    """Table row for broadcastable (modality, position) of query and key; positions count from 0 in-segment.

    Image position 0 is the image [CLS], position 1 + r*W + c the patch at grid row r, column c; text
    position 0 is the text [CLS].
    """
    image_rows = num_image_rows(window)
    R = table_rows(window, l0)
    # image <-> image
    qr, qc = (q_pos - 1).div(window, rounding_mode="floor"), (q_pos - 1) % window
    kr, kc = (k_pos - 1).div(window, rounding_mode="floor"), (k_pos - 1) % window
    img = (qr - kr + window - 1) * (2 * window - 1) + (qc - kc + window - 1)
    img = torch.where(q_pos == 0, image_rows - 3, img)
    img = torch.where(k_pos == 0, image_rows - 2, img)
    img = torch.where((q_pos == 0) & (k_pos == 0), image_rows - 1, img)
    # text <-> text
    txt = image_rows + l0 + (k_pos - q_pos)
    txt = torch.where(q_pos == 0, R - 3, txt)
    txt = torch.where(k_pos == 0, R - 2, txt)
    txt = torch.where((q_pos == 0) & (k_pos == 0), R - 1, txt)
    q_text, k_text = q_mod == TEXT, k_mod == TEXT
    cross = torch.where(q_text, image_rows, image_rows + 1)
    return torch.where(q_text & k_text, txt, torch.where(~q_text & ~k_text, img, cross))


def segment_index(text_len: int, image_len: int, window: int, l0: int, device=None) -> Tensor:
    """The official index matrix of a sequence [text(text_len); image(image_len)]: (N, N) int64.

    text_len=Lt, image_len=0 gives `text_relative_position_index`; 0, Ni gives `relative_position_index`;
    Lt, Ni gives `text_imag_relative_position_index`.
    """
    mod = torch.cat([torch.full((text_len,), TEXT), torch.full((image_len,), IMAGE)]).to(device)
    pos = torch.cat([torch.arange(text_len), torch.arange(image_len)]).to(device)
    return relpos_index(mod[:, None], pos[:, None], mod[None, :], pos[None, :], window, l0)
