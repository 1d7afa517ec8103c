"""The bias context of one attention layer: VLMo's relative position bias as a dense (H, M, M) tile source.

The bias of a (query, key) pair depends only on the slots of query and key, slot = in-segment position for text
and max_text_q + position for image (the dense per-pair form [text(max_text_q); image(max_image)], M slots), so
it is the same for every pair: it is gathered from the table once per layer and step, and every attention path
(the Triton kernels, the dense CPU road, the reference) reads it as tiles.  Its gradient comes back as a dense
(H, M, M) sum over pairs and is folded into the table by a fixed-order segment sum (bitwise reproducible, no
atomics; index_put's accumulate is not deterministic on CUDA).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .backend import use_triton
from .layout import PackedLayout
from .relpos import IMAGE, TEXT, relpos_index


@dataclass(frozen=True)
class AttentionBias:
    """What attention needs to add the relative position bias: `dense` (H, M, M), M = text_slots + image slots,
    entry [h, i, j] the bias of query slot i and key slot j; `text_slots` = the layout's max_text_q."""

    dense: Tensor
    text_slots: int

    @property
    def num_slots(self) -> int:
        return self.dense.shape[-1]


@dataclass(frozen=True)
class SlotIndex:
    """The table row of every (query slot, key slot), flattened, and its inverse for the gradient: `order`
    sorts the M*M entries by row (stable), `counts` (R,) says how many entries each row has."""

    rows: Tensor    # (M * M,) int64
    order: Tensor   # (M * M,) int64
    counts: Tensor  # (R,) int64
    text_slots: int
    num_slots: int


def slot_index(layout: PackedLayout, window: int, l0: int, num_table_rows: int) -> SlotIndex:
    """The index of a layout's slots into a table of `num_table_rows` rows (W x W patches, text positions L0);
    built once per step and shared by every layer."""
    Lq, Li = layout.max_text_q, layout.max_image
    if Lq > l0 or Li > window * window + 1:
        raise ValueError(f"segments (text {Lq}, image {Li}) exceed the relative position table "
                         f"(text <= {l0}, image <= {window * window + 1})")
    slot = torch.arange(Lq + Li, device=layout.device)
    mod = torch.where(slot < Lq, TEXT, IMAGE)
    pos = torch.where(slot < Lq, slot, slot - Lq)
    rows = relpos_index(mod[:, None], pos[:, None], mod[None, :], pos[None, :], window, l0).reshape(-1)
    order = torch.sort(rows, stable=True).indices
    # as bincount, with the table's size as a static shape (bincount's is data-dependent: a compiled step would
    # have to read it back)
    counts = torch.zeros(num_table_rows, dtype=torch.long, device=rows.device).index_add_(0, rows,
                                                                                          torch.ones_like(rows))
    return SlotIndex(rows, order, counts, Lq, Lq + Li)


class _GatherBias(torch.autograd.Function):
    """dense = table[rows] laid out (H, M, M); the backward sums each row's entries in a fixed order."""

    @staticmethod
    def forward(ctx, table: Tensor, index: SlotIndex, dtype: torch.dtype) -> Tensor:
        ctx.index, ctx.table_dtype = index, table.dtype
        M = index.num_slots
        return table.index_select(0, index.rows).t().reshape(-1, M, M).to(dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        index = ctx.index
        H = grad.shape[0]
        acc = torch.promote_types(grad.dtype, torch.float32)  # a half gradient is summed in fp32
        flat = grad.reshape(H, -1).t().to(acc).index_select(0, index.order)  # (M*M, H), grouped by table row
        dtable = torch.segment_reduce(flat, "sum", lengths=index.counts, axis=0, unsafe=True, initial=0.0)
        return dtable.to(ctx.table_dtype), None, None


def _bias_dtype(table: Tensor) -> torch.dtype:
    """The kernels load the bias beside K/V tiles in their operand dtype (bf16 under autocast); the CPU roads
    add it to fp32 logits, so it stays in the table's dtype there."""
    device = table.device.type
    if use_triton(table) and table.dtype != torch.float64 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return table.dtype


def layer_bias(table: Tensor, first_column: int, num_heads: int, index: SlotIndex) -> AttentionBias:
    """The bias of the layer whose heads read columns [first_column, first_column + num_heads) of `table` (R, C)."""
    if table.dim() != 2 or not 0 <= first_column <= table.shape[1] - num_heads:
        raise ValueError(f"relative position table {tuple(table.shape)} has no columns "
                         f"[{first_column}, {first_column + num_heads})")
    if table.shape[0] != index.counts.shape[0]:
        raise ValueError(f"relative position table has {table.shape[0]} rows, the index expects "
                         f"{index.counts.shape[0]}")
    columns = table[:, first_column:first_column + num_heads]
    return AttentionBias(_GatherBias.apply(columns, index, _bias_dtype(table)), index.text_slots)
