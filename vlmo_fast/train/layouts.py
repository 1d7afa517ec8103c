"""The packed layouts of a training step, planned by the data loader (in its workers, on the host) and carried to
the device with the batch, so that the compiled step reads nothing back from the device.

Shapes are bucketed so that an epoch of real batches compiles a handful of graphs.  A pass's text slots (the
longest caption) are rounded up to a multiple of a grain, width / buckets; each text segment gains padded
query-only rows (they attend, are never attended to and never read, as the padded rows the drop-in layer keeps)
until the pass's text rows reach a multiple of P half-grains.  The ITM + MLM pass gives each hard-negative caption
all the text slots, as the negatives are drawn on the device; their real lengths reach the layout there
(PackedLayout.with_text_keys).  The MLM rows are padded to a bucket too, with label -100.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from vlmo_fast import objectives
from vlmo_fast.data.collate import text_lens
from vlmo_fast.data.mlm import IGNORE_INDEX
from vlmo_fast.ops.layout import PackedLayout
from vlmo_fast.ops.packing import make_layout_queries


@dataclass(frozen=True)
class StepLayouts:
    """Every encoder pass a training step makes, planned (None where its tasks make no such pass)."""

    text: PackedLayout | None = None      # the captions alone (ITC, IRTR, text MLM)
    image: PackedLayout | None = None     # the images alone (ITC, IRTR)
    fused: PackedLayout | None = None     # (caption, image) pairs: VQA; NLVR2's 2B pairs (image_0s, then image_1s)
    pretrain: PackedLayout | None = None  # ITM + MLM: [positives | (text, neg. image) | (neg. text, image) | MLM]
    mlm_rows: Tensor | None = None        # (R,) packed rows of the supervised tokens (of `pretrain`, or of `text`
    mlm_labels: Tensor | None = None      # for text MLM) and (R,) their labels, IGNORE_INDEX on the padding

    def _map(self, fn) -> "StepLayouts":
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def to(self, device: torch.device, non_blocking: bool = False) -> "StepLayouts":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "StepLayouts":
        return self._map(lambda t: t.pin_memory())


def text_slots(lens: Tensor, width: int, buckets: int | None) -> int:
    """The text slots of a bucketed pass: the longest caption rounded up to a multiple of ceil(width / buckets)
    (at most `buckets` values); buckets=None: the longest caption itself."""
    longest = int(lens.max()) if lens.numel() else 0
    if buckets is None:
        return longest
    if buckets < 1:
        raise ValueError(f"buckets={buckets}: must be >= 1")
    grain = math.ceil(width / buckets)
    return min(width, math.ceil(longest / grain) * grain)


def bucket_queries(lens: Tensor, width: int, buckets: int | None) -> Tensor:
    """(P,) query rows per text segment: the real lengths plus padding rows, handed out from the first segment on
    (each up to text_slots), until the sum reaches the next multiple of P * ceil(width / buckets) / 2 (an average
    of at most half a grain per caption).  buckets=None plans the exact lengths."""
    if buckets is None:
        return lens
    slots = text_slots(lens, width, buckets)
    P, total = lens.shape[0], int(lens.sum())
    step = max(1, P * math.ceil(width / buckets) // 2)
    target = min(P * slots, math.ceil(total / step) * step)
    room = slots - lens
    pad = (target - total - (torch.cumsum(room, 0) - room)).clamp(min=0).minimum(room)
    return lens + pad


def _rows_bucket(count: int, rows: int, fraction: float) -> int:
    """Planned MLM rows: fraction x the MLM pairs' text rows (a multiple of 8), or the count itself rounded up
    when a batch has more (a rare extra graph)."""
    cap = 8 * math.ceil(fraction * rows / 8)
    return cap if count <= cap else 8 * math.ceil(count / 8)


def mlm_rows(layout: PackedLayout, first_pair: int, labels: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """The packed rows of the supervised tokens of pairs first_pair.. of `layout` (labels (P', width) padded, -100
    where unsupervised), padded to the bucket with row 0 of the first pair's segment and label -100."""
    pair, pos = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    starts = layout.text_start[first_pair:].long()
    rows = starts[pair] + pos
    planned = _rows_bucket(rows.shape[0], int(layout.text_q_len[first_pair:].sum()), fraction)
    pad = planned - rows.shape[0]
    rows = torch.cat([rows, starts[:1].expand(pad)])
    target = torch.cat([labels[pair, pos], torch.full((pad,), IGNORE_INDEX, dtype=labels.dtype)])
    return rows, target


@dataclass(frozen=True)
class LayoutPlanner:
    """The collate's planning hook: batch -> the entries the compiled step reads ("layouts", and the VQA / NLVR2
    targets as tensors).  Picklable, so it runs in the DataLoader workers."""

    tasks: frozenset[str]
    image_tokens: int
    buckets: int | None = 4
    mlm_fraction: float = 0.3  # planned MLM rows per text row of the MLM pairs (the rate is 0.15)
    vqa_labels: int = 0        # the VQA classifier's width (dense targets)

    def __call__(self, batch: dict) -> dict:
        out: dict = {"layouts": self.plan(batch)}
        if "vqa" in self.tasks:
            out["vqa_targets"] = objectives.vqa_targets(batch["vqa_labels"], batch["vqa_scores"], self.vqa_labels)
        if "nlvr2" in self.tasks:
            out["nlvr2_labels"] = torch.as_tensor(batch["answers"], dtype=torch.long)
        return out

    def plan(self, batch: dict) -> StepLayouts:
        tasks, Ni = self.tasks, self.image_tokens
        lens = text_lens(batch)
        B, width = batch["text_ids"].shape
        q, slots = bucket_queries(lens, width, self.buckets), text_slots(lens, width, self.buckets)
        plans: dict = {}
        if tasks & {"itc", "irtr", "textmlm"}:
            plans["text"] = self._layout(lens, q, 0, slots)
        if tasks & {"itc", "irtr"}:
            plans["image"] = make_layout_queries(torch.zeros_like(lens), torch.zeros_like(lens), Ni)
        if "vqa" in tasks:
            plans["fused"] = self._layout(lens, q, Ni, slots)
        if "nlvr2" in tasks:
            plans["fused"] = self._layout(torch.cat([lens, lens]), torch.cat([q, q]), Ni, slots)
        if tasks & {"itm", "mlm"}:
            plans["pretrain"] = self._pretrain(lens, q, slots)
        if "mlm" in tasks or "textmlm" in tasks:
            layout = plans["pretrain"] if "mlm" in tasks else plans["text"]
            first = layout.num_pairs - B
            plans["mlm_rows"], plans["mlm_labels"] = mlm_rows(layout, first, batch["text_labels_mlm"],
                                                              self.mlm_fraction)
        return StepLayouts(**plans)

    def _layout(self, lens: Tensor, q: Tensor, image_len: int, slots: int) -> PackedLayout:
        """A pass's layout; bucketed, its text slots are `slots` (text_slots: the attention's dense per-pair form
        and the bias tiles are sized by them) whatever the longest caption of the batch."""
        layout = make_layout_queries(lens, q, image_len)
        return layout if self.buckets is None else replace(layout, max_text_q=slots)

    def _pretrain(self, lens: Tensor, q: Tensor, slots: int) -> PackedLayout:
        """[positives | (text, neg. image) | (neg. text, image): all text slots | MLM input], as enabled."""
        k_parts, q_parts = [], []
        if "itm" in self.tasks:
            full = torch.full_like(lens, slots)  # every caption fits; their real lengths arrive on the device
            k_parts, q_parts = [lens, lens, full], [q, q, full]
        if "mlm" in self.tasks:
            k_parts.append(lens)
            q_parts.append(q)
        return self._layout(torch.cat(k_parts), torch.cat(q_parts), self.image_tokens, slots)
