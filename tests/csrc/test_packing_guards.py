"""Every int64 -> int32 narrowing of the extension is refused with an error naming the quantity and the limit;
the segment check (one rule, csrc/packing_kernels.h segment_ok, that the CUDA ops run on the device) names the
pair and the kind of segment.

Sizes past 2^31 are reached without allocating them: tiny lengths that add up, empty tensors with a wide
dimension, or expanded (stride-0) views, checked before anything is materialised."""
from __future__ import annotations

import pytest
import torch

from vlmo_fast.ops import packing as pk

from .batches import require_ext

ops = torch.ops.vlmo_fast
LIMIT = 2**31 - 1
BIG = 2**30
i32 = torch.int32


@pytest.fixture
def ext():
    require_ext()


def test_pack_plan_refuses_rows_past_int32(ext):
    lens = torch.tensor([BIG, BIG, 1], dtype=i32)
    with pytest.raises(RuntimeError, match=f"2147483649 rows .*over the int32 row-index limit of {LIMIT}"):
        ops.pack_plan(lens, 0, -1)  # dropped padding: the exact count comes from the plan itself
    with pytest.raises(RuntimeError, match=f"{2 * BIG + 2 * BIG} rows .*limit of {LIMIT}"):
        ops.pack_plan(lens[:2], BIG, BIG)  # padded text: refused before the kernel runs
    with pytest.raises(RuntimeError, match=f"3 pairs x {BIG} image\\), over the int32 row-index limit"):
        ops.pack_plan(torch.zeros(3, dtype=i32), BIG, -1)
    with pytest.raises(RuntimeError, match=f"2147483648 pairs, over the int32 pair-index limit of {LIMIT}"):
        ops.pack_plan(torch.zeros(1, dtype=i32).expand(2**31), 0, -1)
    start, *_, stats = ops.pack_plan(torch.tensor([BIG, BIG, -5], dtype=i32), 0, -1)
    assert int(stats[2]) == -5  # a negative length invalidates the plan; make_layout reports it, not the count


def test_exactly_int32_rows_pass(ext):
    *_, stats = ops.pack_plan(torch.tensor([BIG, BIG - 1], dtype=i32), 0, -1)
    assert stats.tolist() == [LIMIT, BIG, BIG - 1, BIG]


@pytest.mark.parametrize("kernels", ["auto", "ref"])
def test_make_layout_refuses_rows_past_int32(monkeypatch, kernels):
    monkeypatch.setenv("VLMO_FAST_KERNELS", kernels)
    with pytest.raises((RuntimeError, ValueError), match="over the int32 row-index limit"):
        pk.make_layout(torch.tensor([BIG, BIG, 1]), 0)
    with pytest.raises(ValueError, match="text lengths must be >= 0"):
        pk.make_layout(torch.tensor([BIG, BIG, -1]), 0)


def test_other_narrowings(ext):
    with pytest.raises(RuntimeError, match=f"mask has {2**31} positions, over the int32 length limit of {LIMIT}"):
        ops.mask_lengths(torch.empty(0, 2**31, dtype=torch.uint8))
    empty = torch.zeros(0, dtype=i32)
    with pytest.raises(RuntimeError, match=f"has {2**31} rows, over the int32 row-index limit of {LIMIT}"):
        ops.plan_row_pair(empty, empty, empty, 0, 2**31)
    wide = torch.zeros(1, dtype=i32).expand(2**31)
    with pytest.raises(RuntimeError, match="2147483648 pairs, over the int32 pair-index limit"):
        ops.plan_row_pair(wide, wide, wide, 0, 0)


def test_segment_check_names_pair_and_kind(ext):
    start, q, image_start = (torch.tensor(v, dtype=i32) for v in ([0, 3], [3, 2], [5, 7]))
    with pytest.raises(RuntimeError, match="pair 1's image segment \\[7, 9\\) lies outside the 8 packed rows"):
        ops.plan_row_pair(start, q, image_start, 2, 8)
    with pytest.raises(RuntimeError, match="pair 0 has -1 text rows, outside \\[0, 4\\]"):
        ops.unpack_rows(torch.zeros(9, 2), start, torch.tensor([-1, 2], dtype=i32), image_start, 4, 2)
    with pytest.raises(RuntimeError, match="pair 1's image segment \\[7, 9\\) lies outside the 8 packed rows"):
        ops.pack_rows(torch.zeros(2, 3, 4), torch.zeros(2, 2, 4), start, q, image_start, 8)
    with pytest.raises(RuntimeError, match="pair 1's image segment \\[-2, 0\\) lies outside the 9 packed rows"):
        ops.unpack_rows(torch.zeros(9, 2), start, q, torch.tensor([5, -2], dtype=i32), 3, 2)
    # Empty segments may start anywhere: they touch no row.
    ops.pack_rows(torch.zeros(2, 3, 4), None, torch.tensor([0, 99], dtype=i32), torch.tensor([3, 0], dtype=i32),
                  image_start, 3)
