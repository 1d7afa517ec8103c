"""Packing ops: build a PackedLayout and move rows between the padded and the packed form.

Each op has a torch reference (`*_ref`, the ground truth of the tests) and a public function that dispatches
to the compiled extension vlmo_fast._C (csrc/, CPU and CUDA kernels) when it is loaded for the tensor's device
and VLMO_FAST_KERNELS is not "ref", else to the reference.  Both paths give identical results (data movement
is exact) and both are differentiable; the extension's ops also trace under torch.compile(fullgraph=True).

Data may carry any trailing shape: padded text (P, Lt, ...), image (P, Ni, ...), packed rows (T, ...).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from . import _ext
from .backend import kernel_choice
from .layout import PackedLayout

_INT32_LIMIT = 2**31 - 1


def _use_ext(t: Tensor) -> bool:
    return kernel_choice() != "ref" and _ext.available(t.device)


def _exclusive_cumsum(x: Tensor) -> Tensor:
    return torch.cumsum(x, 0) - x


def _row_numel(t: Tensor, lead: int) -> int:
    """Elements per row once the first `lead` dims are taken as rows (explicit: -1 fails on empty tensors)."""
    return math.prod(t.shape[lead:])


def _check_layout_args(text_lens: Tensor, image_len: int, text_q_len: int | None) -> None:
    if text_lens.dim() != 1:
        raise ValueError(f"text_lens must be 1-D (P,), got shape {tuple(text_lens.shape)}")
    if image_len < 0 or (text_q_len is not None and text_q_len < 0):
        raise ValueError(f"image_len and text_q_len must be >= 0, got {image_len} and {text_q_len}")


def _check_query_lens(text_lens: Tensor, query_lens: Tensor) -> None:
    if query_lens.shape != text_lens.shape:
        raise ValueError(f"query_lens {tuple(query_lens.shape)} must match text_lens {tuple(text_lens.shape)}")
    short = (query_lens < text_lens).nonzero()
    if short.numel():
        p = int(short[0, 0])
        raise ValueError(f"pair {p} has {int(query_lens[p])} query rows for {int(text_lens[p])} real tokens")


def _check_row_count(num_text: int, P: int, image_len: int) -> None:
    """Packed row indices are int32 (PackedLayout), as in the extension's pack_plan."""
    rows = num_text + P * image_len
    if rows > _INT32_LIMIT:
        raise ValueError(f"the packed layout would have {rows} rows ({num_text} text + {P} pairs x {image_len} "
                         f"image), over the int32 row-index limit of {_INT32_LIMIT}")


# ---------------------------------------------------------------------------------------------------------------
# References
def make_layout_ref(text_lens: Tensor, image_len: int, text_q_len: int | None = None) -> PackedLayout:
    """Layout for P pairs with real text lengths `text_lens` (P,) and `image_len` image tokens per pair.

    text_q_len=None drops padding (each segment holds only its real tokens); text_q_len=Lt keeps every text
    segment padded to Lt rows, the padded rows as queries only.
    """
    _check_layout_args(text_lens, image_len, text_q_len)
    text_lens = text_lens.to(torch.int32)
    P = text_lens.shape[0]
    dev = text_lens.device
    if P and int(text_lens.min()) < 0:
        raise ValueError(f"text lengths must be >= 0, got {int(text_lens.min())}")
    q_len = text_lens if text_q_len is None else torch.full_like(text_lens, text_q_len)
    if text_q_len is not None and P and int(text_lens.max()) > text_q_len:
        raise ValueError(f"text length {int(text_lens.max())} exceeds the padded length {text_q_len}")
    num_text = int(q_len.sum()) if P else 0
    _check_row_count(num_text, P, image_len)
    text_start = _exclusive_cumsum(q_len).to(torch.int32)
    image_start = (num_text + torch.arange(P, device=dev, dtype=torch.int32) * image_len).to(torch.int32)
    img_len = torch.full_like(text_lens, image_len)
    pair = torch.arange(P, device=dev, dtype=torch.int32)
    row_pair = torch.cat([torch.repeat_interleave(pair, q_len.long()), torch.repeat_interleave(pair, image_len)])
    return PackedLayout(
        text_start=text_start, text_q_len=q_len.contiguous(), text_k_len=text_lens.contiguous(),
        image_start=image_start, image_len=img_len, row_pair=row_pair.to(torch.int32),
        num_text_rows=num_text, num_rows=num_text + P * image_len,
        max_text_q=int(q_len.max()) if P else 0, max_image=image_len if P else 0,
    )


def mask_lengths_ref(mask: Tensor) -> Tensor:
    """(P, L) text mask -> (P,) int32 real lengths; raises ValueError naming the first sample whose mask is
    not a prefix of ones (1...1 0...0, values 0 or 1)."""
    if mask.dim() != 2:
        raise ValueError(f"the text mask must be (P, L), got shape {tuple(mask.shape)}")
    ones = mask == 1
    lens = ones.sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device) < lens[:, None]
    bad = (((mask == 0) | ones) & (ones == prefix)).all(1).logical_not()
    if bool(bad.any()):
        raise ValueError(_bad_mask_message(int(bad.nonzero()[0, 0])))
    return lens.to(torch.int32)


def _bad_mask_message(p: int) -> str:
    return f"text mask of sample {p} is not a prefix of ones (expected 1...1 0...0 with values 0/1)"


def make_layout_from_mask_ref(mask: Tensor, image_len: int, keep_padded: bool = False) -> PackedLayout:
    """Layout from a padded (P, Lt) 0/1 text mask; keep_padded keeps every text segment Lt rows long."""
    return make_layout_ref(mask_lengths_ref(mask), image_len, mask.shape[1] if keep_padded else None)


def text_row_index_ref(layout: PackedLayout, padded_len: int) -> Tensor:
    """(num_text_rows,) int64: for every packed text row, its flat index in the padded (P * padded_len) text."""
    pair = layout.row_pair[: layout.num_text_rows].long()
    pos = torch.arange(layout.num_text_rows, device=layout.device) - layout.text_start.long()[pair]
    return pair * padded_len + pos


def pack_text_ref(text: Tensor, layout: PackedLayout) -> Tensor:
    """(P, Lt, ...) padded text -> (num_text_rows, ...) packed rows."""
    P, Lt = text.shape[:2]
    return text.reshape(P * Lt, *text.shape[2:])[text_row_index_ref(layout, Lt)]


def unpack_text_ref(rows: Tensor, layout: PackedLayout, padded_len: int) -> Tensor:
    """(num_text_rows, ...) packed rows -> (P, padded_len, ...), zeros at the dropped padding."""
    P = layout.num_pairs
    out = rows.new_zeros(P * padded_len, *rows.shape[1:])
    out = out.index_copy(0, text_row_index_ref(layout, padded_len), rows)
    return out.reshape(P, padded_len, *rows.shape[1:])


def pack_ref(text: Tensor | None, image: Tensor | None, layout: PackedLayout) -> Tensor:
    """Padded text (P, Lt, ...) and image (P, Ni, ...) -> packed (T, ...): text rows, then image rows."""
    parts = []
    if text is not None:
        parts.append(pack_text_ref(text, layout))
    if image is not None:
        parts.append(image.reshape(image.shape[0] * image.shape[1], *image.shape[2:]))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def unpack_ref(x: Tensor, layout: PackedLayout, padded_len: int) -> tuple[Tensor, Tensor]:
    """Packed (T, ...) -> (text (P, padded_len, ...) with zeros at dropped padding, image (P, Ni, ...))."""
    nt = layout.num_text_rows
    text = unpack_text_ref(x[:nt], layout, padded_len)
    return text, x[nt:].reshape(layout.num_pairs, layout.max_image, *x.shape[1:])


def make_layout_queries_ref(text_lens: Tensor, query_lens: Tensor, image_len: int) -> PackedLayout:
    """Layout whose text segment p holds query_lens[p] rows, of which the first text_lens[p] are real tokens (the
    rest padded query-only rows): the bucketed layouts of the compiled step (vlmo_fast/train/layouts.py)."""
    _check_query_lens(text_lens, query_lens)
    return replace(make_layout_ref(query_lens, image_len), text_k_len=text_lens.to(torch.int32).contiguous())


# ---------------------------------------------------------------------------------------------------------------
# Dispatch
def _layout_from_lens(lens: Tensor, image_len: int, text_q_len: int | None, from_mask: bool) -> PackedLayout:
    """The extension's layout: one kernel for the per-pair metadata and the row counts, one host read of the
    counts, one kernel for row_pair (on CUDA after a segment check: a second small read; no read on the CPU).
    The counts are exact (int64): plan_row_pair refuses a layout over int32's row-index limit."""
    ops = torch.ops.vlmo_fast
    P = lens.shape[0]
    start, q_len, k_len, image_start, img_len, stats = ops.pack_plan(
        lens, image_len, -1 if text_q_len is None else text_q_len)
    num_text, max_q, min_k, max_k = stats.tolist()
    if min_k < 0:
        if from_mask:  # mask_lengths marks a bad mask row with -1; finding which costs a second read
            raise ValueError(_bad_mask_message(int((lens < 0).nonzero()[0, 0])))
        raise ValueError(f"text lengths must be >= 0, got {min_k}")
    if text_q_len is not None and max_k > text_q_len:
        raise ValueError(f"text length {max_k} exceeds the padded length {text_q_len}")
    num_rows = num_text + P * image_len
    row_pair = ops.plan_row_pair(start, q_len, image_start, image_len, num_rows)
    return PackedLayout(text_start=start, text_q_len=q_len, text_k_len=k_len, image_start=image_start,
                        image_len=img_len, row_pair=row_pair, num_text_rows=num_text, num_rows=num_rows,
                        max_text_q=max_q, max_image=image_len if P else 0)


def make_layout(text_lens: Tensor, image_len: int, text_q_len: int | None = None) -> PackedLayout:
    """Layout for P pairs with real text lengths (P,) and `image_len` image tokens each (see make_layout_ref).

    On CUDA reads the device twice (the row counts, then plan_row_pair's segment check); never on the CPU.
    """
    if not _use_ext(text_lens):
        return make_layout_ref(text_lens, image_len, text_q_len)
    _check_layout_args(text_lens, image_len, text_q_len)
    return _layout_from_lens(text_lens.to(torch.int32), int(image_len), text_q_len, from_mask=False)


def make_layout_queries(text_lens: Tensor, query_lens: Tensor, image_len: int) -> PackedLayout:
    """Layout with query_lens[p] >= text_lens[p] rows in text segment p (see make_layout_queries_ref), through
    make_layout's dispatch (the extension where loaded); the data loader plans it on the host."""
    _check_query_lens(text_lens, query_lens)
    return replace(make_layout(query_lens, image_len), text_k_len=text_lens.to(torch.int32).contiguous())


def make_layout_from_mask(mask: Tensor, image_len: int, keep_padded: bool = False) -> PackedLayout:
    """Layout from a padded (P, Lt) text mask of 0/1 prefixes (1 = real token); keep_padded keeps every text
    segment Lt rows long (padded rows as queries only).  Raises ValueError naming a sample whose mask is not
    1...1 0...0."""
    if not _use_ext(mask):
        return make_layout_from_mask_ref(mask, image_len, keep_padded)
    if mask.dim() != 2:
        raise ValueError(f"the text mask must be (P, L), got shape {tuple(mask.shape)}")
    if image_len < 0:
        raise ValueError(f"image_len must be >= 0, got {image_len}")
    if mask.dtype not in (torch.bool, torch.uint8):
        # The kernel reads bytes: map every value other than 0/1 to 2 (invalid) before narrowing.
        mask = torch.where((mask == 0) | (mask == 1), mask, 2).to(torch.uint8)
    lens = torch.ops.vlmo_fast.mask_lengths(mask)
    return _layout_from_lens(lens, int(image_len), mask.shape[1] if keep_padded else None, from_mask=True)


def _check_padded(name: str, t: Tensor, layout: PackedLayout, min_len: int) -> None:
    if t.dim() < 2 or t.shape[0] != layout.num_pairs:
        raise ValueError(f"{name} must be (P={layout.num_pairs}, L, ...), got shape {tuple(t.shape)}")
    if t.shape[1] < min_len:
        raise ValueError(f"{name} has {t.shape[1]} rows per pair but the layout needs {min_len}")


def _check_rows(name: str, t: Tensor, rows: int) -> None:
    if t.dim() < 1 or t.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows (the layout's), got shape {tuple(t.shape)}")


def pack_text(text: Tensor, layout: PackedLayout) -> Tensor:
    """(P, Lt, ...) padded text -> (num_text_rows, ...) packed rows."""
    _check_padded("text", text, layout, layout.max_text_q)
    if not _use_ext(text):
        return pack_text_ref(text, layout)
    P, Lt = text.shape[:2]
    out = torch.ops.vlmo_fast.pack_rows(text.reshape(P, Lt, _row_numel(text, 2)), None, layout.text_start,
                                        layout.text_q_len, layout.image_start, layout.num_text_rows)
    return out.reshape(layout.num_text_rows, *text.shape[2:])


def unpack_text(rows: Tensor, layout: PackedLayout, padded_len: int) -> Tensor:
    """(num_text_rows, ...) packed rows -> (P, padded_len, ...), zeros at the dropped padding."""
    _check_rows("rows", rows, layout.num_text_rows)
    if padded_len < layout.max_text_q:
        raise ValueError(f"padded_len {padded_len} is below the layout's longest text segment {layout.max_text_q}")
    if not _use_ext(rows):
        return unpack_text_ref(rows, layout, padded_len)
    text, _ = torch.ops.vlmo_fast.unpack_rows(rows.reshape(rows.shape[0], _row_numel(rows, 1)), layout.text_start,
                                              layout.text_q_len, layout.image_start, padded_len, 0)
    return text.reshape(layout.num_pairs, padded_len, *rows.shape[1:])


def pack(text: Tensor | None, image: Tensor | None, layout: PackedLayout) -> Tensor:
    """Padded text (P, Lt, ...) and image (P, Ni, ...) -> packed (T, ...): text rows, then image rows.

    text=None for an image-only layout, image=None for a text-only one.
    """
    if text is None and image is None:
        raise ValueError("pack needs text, image or both")
    if text is None and layout.num_text_rows:
        raise ValueError(f"the layout has {layout.num_text_rows} text rows but no text was given")
    if image is None and layout.num_rows != layout.num_text_rows:
        raise ValueError(f"the layout has {layout.num_rows - layout.num_text_rows} image rows but no image was given")
    if text is not None:
        _check_padded("text", text, layout, layout.max_text_q)
    if image is not None:
        _check_padded("image", image, layout, layout.max_image)
        if image.shape[1] != layout.max_image:
            raise ValueError(f"image has {image.shape[1]} tokens per pair, the layout {layout.max_image}")
        if text is not None and (text.shape[2:] != image.shape[2:] or text.dtype != image.dtype):
            raise ValueError(f"text {tuple(text.shape)} {text.dtype} and image {tuple(image.shape)} {image.dtype} "
                             "must share their row shape and dtype")
    anchor = text if text is not None else image
    if not _use_ext(anchor):
        return pack_ref(text, image, layout)
    P, row_shape = layout.num_pairs, anchor.shape[2:]
    D = _row_numel(anchor, 2)
    if text is None:
        text = anchor.new_empty((P, 0, D))
    out = torch.ops.vlmo_fast.pack_rows(text.reshape(P, text.shape[1], D),
                                        None if image is None else image.reshape(P, image.shape[1], D),
                                        layout.text_start, layout.text_q_len, layout.image_start, layout.num_rows)
    return out.reshape(layout.num_rows, *row_shape)


def unpack(x: Tensor, layout: PackedLayout, padded_len: int) -> tuple[Tensor, Tensor]:
    """Packed (T, ...) -> (text (P, padded_len, ...) with zeros at dropped padding, image (P, Ni, ...))."""
    _check_rows("x", x, layout.num_rows)
    if padded_len < layout.max_text_q:
        raise ValueError(f"padded_len {padded_len} is below the layout's longest text segment {layout.max_text_q}")
    if not _use_ext(x):
        return unpack_ref(x, layout, padded_len)
    # The image rows of a layout are already (P, Ni, ...) in pair order: return a view, as the reference does,
    # instead of copying the bulk of the batch.
    nt = layout.num_text_rows
    return unpack_text(x[:nt], layout, padded_len), x[nt:].reshape(layout.num_pairs, layout.max_image, *x.shape[1:])
