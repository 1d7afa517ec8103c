"""Streaming from tar shards (data_format=wds): the rank/worker split, the seeded order, exact resume, the arrow
reader's samples, patterns and pipes, and bad samples, truncated and missing shards."""
from __future__ import annotations

import logging

import pytest
import torch

from tests.data.helpers import damaged_shards
from vlmo_fast.data.convert.to_shards import arrow_to_shards
from vlmo_fast.data.datasets import build_dataset
from vlmo_fast.data.wds_plan import rank_range, spans, worker_batches
from vlmo_fast.train.data import build_split, epoch_loader
from vlmo_fast.train.tasks import resolve

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def wds_root(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("wds")
    arrow_to_shards(synthetic_root, out, max_samples=16, progress_bar=False)
    return out


def config(root, *extra):
    return resolve("task_mlm_itm_itc_tiny", ["data_format=wds", f"data_root={root}", "wds_shuffle_buffer=40",
                                             "num_workers=0", *extra])


def epoch(split, cfg, rank=0, world=1, B=4, accumulate=1, start=0, ep=0):
    return [b for b in epoch_loader(split, cfg, B, accumulate, ep, start, rank, world, CPU)]


def keys(batches):
    return [k for b in batches for k in b["raw_index"].tolist()]


def test_plan_covers_each_sample_once_per_rank_and_worker():
    assert rank_range(103, 2, 1, 8) == (48, 96)  # 103 // 2 = 51 -> 48 (whole steps of 8)
    assert worker_batches(7, 3) == [3, 2, 2]
    from vlmo_fast.data.wds_plan import Shard
    shards = [Shard(url=str(k), dataset="synthetic_caption", table="t", rows=n, samples=n, bytes=0, first_sample=0,
                    table_row_offset=0, table_sample_offset=0) for k, n in enumerate([5, 7, 3])]
    assert [(s.shard.url, s.lo, s.hi) for s in spans(shards, 4, 13)] == [("0", 4, 5), ("1", 0, 7), ("2", 0, 1)]


def test_ranks_see_every_sample_but_the_tail_once(wds_root):
    cfg = config(wds_root)
    split = build_split(cfg, "train", train=True)
    assert len(split) == 400 and len(split.check.good) == len(split.shards)
    seen = [keys(epoch(split, cfg, rank=r, world=3, B=4, accumulate=2)) for r in range(3)]
    assert [len(s) for s in seen] == [128, 128, 128]  # 400 // 3 = 133 -> 128: whole steps of 8
    flat = sum(seen, [])
    assert len(set(flat)) == len(flat) == 384 and set(flat) <= set(range(400))


def test_order_is_seeded_and_resume_is_exact(wds_root):
    cfg = config(wds_root)
    split = build_split(cfg, "train", train=True)
    full = epoch(split, cfg, world=2)
    assert keys(full) == keys(epoch(split, cfg, world=2))  # (seed, epoch) -> one order
    assert keys(full) != keys(epoch(split, cfg, world=2, ep=1))
    resumed = epoch(split, cfg, world=2, start=13)
    assert len(resumed) == len(full) - 13
    for a, b in zip(full[13:], resumed):
        assert torch.equal(a["image"][0], b["image"][0]) and torch.equal(a["text_ids_mlm"], b["text_ids_mlm"])


def test_workers_split_the_rank_and_resume_exactly(wds_root):
    cfg = config(wds_root, "num_workers=2")
    split = build_split(cfg, "train", train=True)
    full = keys(epoch(split, cfg, world=2, rank=1))
    assert len(full) == len(set(full)) == 200
    assert keys(epoch(split, cfg, world=2, rank=1, start=7)) == full[7 * 4:]


def test_samples_equal_the_arrow_readers(synthetic_root, wds_root):
    cfg = config(wds_root, "datasets=synthetic_vqa", "loss_names.vqa=1")
    split = build_split(cfg, "train", train=True)
    batch = epoch(split, cfg, ep=2)[0]
    arrow = build_dataset(synthetic_root, "synthetic_vqa", "train", image_size=64, max_text_len=24,
                          transform="square_transform")
    arrow.set_epoch(2)
    for k, index in enumerate(batch["raw_index"].tolist()):
        sample = arrow[index]
        assert torch.equal(batch["image"][0][k], sample["image"]) and batch["text"][k] == sample["text"]
        assert batch["vqa_labels"][k] == sample["vqa_labels"] and batch["qid"][k] == sample["qid"]
        assert batch["img_index"][k] == sample["img_index"] and batch["table_name"][k] == sample["table_name"]


def test_brace_pattern_and_pipe_urls(wds_root):
    names = sorted(p.name for p in wds_root.glob("synthetic_caption_train-*.tar"))
    last = names[-1][len("synthetic_caption_train-"):-4]
    pattern = str(wds_root / f"synthetic_caption_train-{{000000..{last}}}.tar")
    cfg = config(pattern)
    reference = keys(epoch(build_split(config(wds_root), "train", train=True), config(wds_root)))
    assert keys(epoch(build_split(cfg, "train", train=True), cfg)) == reference
    pipe = f"pipe:cat {pattern}"
    cfg = config(pipe)
    assert keys(epoch(build_split(cfg, "train", train=True), cfg)) == reference
    with pytest.raises(ValueError, match="synthetic_vqa"):
        build_split(config(str(wds_root / "synthetic_vqa_train-000000.tar")), "train", train=True)


def test_bad_sample_truncated_and_missing_shards_are_named_counted_and_skipped(wds_root, tmp_path, caplog):
    root = damaged_shards(wds_root, tmp_path / "damaged", missing="synthetic_caption_train-000002.tar",
                          truncated="synthetic_caption_train-000005.tar", keep_bytes=5000,
                          corrupt="synthetic_caption_train-000007.tar", broken=300)
    cfg = config(root)
    with caplog.at_level(logging.WARNING):
        split = build_split(cfg, "train", train=True)
        loader = epoch_loader(split, cfg, 4, 1, 0, 0, 0, 1, CPU)
        batches = list(loader)
    assert [s.rsplit("/", 1)[-1] for s in split.check.missing] == ["synthetic_caption_train-000002.tar"]
    assert [s.rsplit("/", 1)[-1] for s in split.check.truncated] == ["synthetic_caption_train-000005.tar"]
    assert split.check.lost_samples == 64 and len(split) == 400 - 64
    assert loader.skipped == 2 and len(batches) == (400 - 64) // 4  # the two captions of the broken image
    text = caplog.text
    assert text.count("synthetic_caption_train-000002.tar is missing") == 1
    assert text.count("synthetic_caption_train-000005.tar is truncated") == 1
    assert text.count("synthetic_caption_train-000007.tar sample") == 1 and "cannot decode" in text
    assert text.count("completed with repeated samples") == 1  # the rank's batch count is kept


def test_data_format_is_checked(wds_root):
    with pytest.raises(ValueError, match="data_format='tfrecord'"):
        build_split(config(wds_root, "data_format=tfrecord"), "train", train=True)


def test_a_shard_that_breaks_while_streamed_is_named_and_the_batches_completed(wds_root, caplog):
    """Through a pipe a shard's size is unknown beforehand: one cut short is named when read, its lost samples
    counted, and the rank still makes all its batches (from the samples it has)."""
    shard = wds_root / "synthetic_caption_train-000000.tar"
    cfg = config(f"pipe:head -c 9000 {shard}")
    with caplog.at_level(logging.WARNING):
        split = build_split(cfg, "train", train=True)
        loader = epoch_loader(split, cfg, 4, 1, 0, 0, 0, 1, CPU)
        batches = list(loader)
    assert len(split) == 32 and len(batches) == 8
    got = keys(batches)
    assert 0 < len(set(got)) < 32 and loader.skipped == 32 - len(set(got))
    assert caplog.text.count(f"shard pipe:head -c 9000 {shard}") == 1 and "truncated or unreadable" in caplog.text
