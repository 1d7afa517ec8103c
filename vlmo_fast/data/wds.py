"""Streaming the training split from tar shards (data_format=wds): rank and worker split (wds_plan.py), a seeded
shuffle buffer, exact resume, and the arrow reader's samples and collate.

A logical worker streams its shard pieces in order, expands every row into its (row, text) samples, passes them
through a shuffle buffer seeded by (seed, epoch, rank, worker), and makes whole batches with the arrow reader's
Collator; a sample is the arrow reader's sample (same raw_index, sample_seed, transform), so training from shards
and from arrow differ only in the order.  Resuming at batch m of an epoch, each worker replays its stream up to
the same point without decoding (the samples it had emitted are dropped), so the run sees what an uninterrupted one
would.  A sample whose image does not decode, or a shard that breaks while read (a pipe: its size was not known
beforehand), is named in a warning and counted; a batch left short is completed with samples of the same batch,
so every rank makes the same number of batches.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlmo_fast.data.collate import Collator
from vlmo_fast.data.datasets import build_sample
from vlmo_fast.seeds import sample_seed
from vlmo_fast.data.images import BadImage
from vlmo_fast.data.registry import get_spec
from vlmo_fast.data.shards import ShardError, iter_records, record_row
from vlmo_fast.data.sources import ShardStream
from vlmo_fast.data.tokenizer import get_tokenizer
from vlmo_fast.data.transforms import get_transform
from vlmo_fast.data.wds_plan import Shard, Span, shard_order, split_shards, worker_spans
from vlmo_fast.run_config import RunConfig

log = logging.getLogger(__name__)
SKIPPED_KEY = "wds_skipped"  # per batch: samples the worker skipped since its previous batch (popped by WdsLoader)


class RowTable:
    """One tar sample as the table that build_sample reads (its split-level row only)."""

    def __init__(self, row: dict, index: int, texts: list[str], table: str, where: str):
        self.row, self.index, self.where = row, index, where
        self.texts = {index: texts}
        self.table_names = {index: table}
        self.bad = False  # its image failed to decode (its other samples are skipped without another warning)

    def value(self, column: str, row: int):
        if column not in self.row:
            raise KeyError(f"{self.where}: column {column!r} missing")
        return self.row[column]

    def row_key(self, row: int) -> str:
        return self.where


@dataclass
class Pending:
    """A sample read but not built yet (building decodes its image)."""

    table: RowTable
    shard: Shard
    cap: int
    index: int  # split-level sample index (the arrow reader's raw_index)


def _span_samples(span: Span, stats: dict):
    """The samples of a shard piece, in order; a shard that breaks is warned about, named and counted."""
    shard, spec = span.shard, get_spec(span.shard.dataset)
    seen = 0
    try:
        with ShardStream(shard.url) as stream:
            for key, members in iter_records(stream, shard.url):
                try:
                    row = record_row(members, key, shard.url)
                    texts = row[spec.text_column]
                except (ValueError, KeyError) as e:
                    stats["skipped"] += 1
                    log.warning("%s: skipping sample %s: %s", shard.url, key, e)
                    continue
                texts = list(dict.fromkeys(texts)) if spec.remove_duplicate else list(texts)
                first = int(row["_first_sample"]) - shard.first_sample  # shard-local
                if first >= span.hi:
                    return
                table = RowTable(row, shard.table_row_offset + int(row["_row"]), texts, shard.table,
                                 f"{shard.url} sample {key}")
                for cap in range(max(0, span.lo - first), min(len(texts), span.hi - first)):
                    seen += 1
                    yield Pending(table, shard, cap, shard.table_sample_offset + shard.first_sample + first + cap)
    except (ShardError, OSError) as e:
        lost = span.hi - span.lo - seen
        stats["skipped"] += lost
        log.warning("%s; %d samples of it skipped", e, lost)  # e names the shard


def shuffled(items, size: int, rng: np.random.Generator):
    """A shuffle buffer: hold up to `size` items, emit a random one for each new one, then drain at random."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = int(rng.integers(size))
        buffer[k], item = item, buffer[k]
        yield item
    while buffer:
        yield buffer.pop(int(rng.integers(len(buffer))))


class WdsEpoch(IterableDataset):
    """One epoch of one rank from batch `start_batch` on: yields collated batches (module docstring)."""

    def __init__(self, split: "WdsSplit", epoch: int, rank: int, world: int, batch_size: int, unit: int,
                 workers: int, start_batch: int):
        self.split, self.epoch, self.rank, self.world = split, epoch, rank, world
        self.batch_size, self.unit, self.workers, self.start_batch = batch_size, unit, max(1, workers), start_batch
        self.order = shard_order(split.shards, split.seed, epoch)

    def _logical_worker(self) -> int:
        info = get_worker_info()
        return ((info.id if info else 0) + self.start_batch) % self.workers

    def __iter__(self):
        L = self._logical_worker()
        pieces, count = worker_spans(self.order, self.rank, self.world, self.batch_size, self.unit,
                                     self.workers, L)
        skip = len(range(L, self.start_batch, self.workers)) * self.batch_size  # batches made before the resume
        stats = {"skipped": 0}
        rng = np.random.default_rng([self.split.seed, self.epoch, self.rank, L])
        stream = shuffled((p for span in pieces for p in _span_samples(span, stats)), self.split.buffer, rng)
        for _ in range(skip):
            if next(stream, None) is None:
                break
        made, batch, last, reported = 0, [], [], 0
        for pending in stream:
            sample = self.split.build(pending, self.epoch, stats)
            if sample is not None:
                batch.append(sample)
            if len(batch) == self.batch_size:
                yield self._collate(batch, stats, reported)
                reported, made, batch, last = stats["skipped"], made + 1, [], batch
        lost = count - skip // self.batch_size - made  # batches lost to bad samples or broken shards
        if lost > 0:
            log.warning("rank %d: %d batch(es) completed with repeated samples, so that every rank makes as many",
                        self.rank, lost)
        for _ in range(lost):
            source = batch or last
            if not source:
                raise RuntimeError(f"rank {self.rank}: no decodable sample left in its shards for epoch {self.epoch}")
            batch = (source * self.batch_size)[:self.batch_size]
            yield self._collate(batch, stats, reported)
            reported = stats["skipped"]

    def _collate(self, samples: list[dict], stats: dict, reported: int) -> dict:
        batch = self.split.collate(samples)
        batch[SKIPPED_KEY] = stats["skipped"] - reported
        return batch


class WdsSplit:
    """The training split of a task as shards: len() is its sample count (shards left out not counted);
    `loader(...)` streams one epoch of one rank.

    Example: WdsSplit(resolve("task_mlm_itm_itc_tiny", ["data_format=wds", "data_root=shards/"]))
    """

    def __init__(self, config: RunConfig, split: str = "train", *, train: bool = True, decode: str = "pil",
                 text_only: bool = False):
        all_shards, self.check = split_shards(config, split)
        self.shards: list[Shard] = self.check.good
        if not self.shards:
            raise FileNotFoundError(f"data_root={config.data.data_root}: none of the {len(all_shards)} shards is readable")
        self.seed, self.buffer = config.runtime.seed, max(1, config.data.wds_shuffle_buffer)
        self.text_only, self.max_text_len = text_only, config.model.max_text_len
        self.collate = Collator(max_text_len=config.model.max_text_len, whole_word=config.data.whole_word_masking,
                                mlm_prob=config.data.mlm_prob)
        self.transforms = {}
        for name in {s.dataset for s in self.shards}:
            spec = get_spec(name)
            if decode == "pil" and spec.kind != "text" and not text_only:
                self.transforms[name] = get_transform(spec.train_transform if train else "square_transform",
                                                      config.model.image_size)
        self._tokenizer = None

    def __len__(self) -> int:
        return sum(s.samples for s in self.shards)

    def build(self, p: Pending, epoch: int, stats: dict) -> dict | None:
        """The arrow reader's sample for a pending one; None (warned, counted) when its image does not decode."""
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer()
        kind = "text" if self.text_only else get_spec(p.shard.dataset).kind
        if p.table.bad:
            stats["skipped"] += 1
            return None
        try:
            return build_sample(p.table, kind, p.index, p.table.index, p.cap,
                                seed=sample_seed(self.seed, epoch, p.index), transform=self.transforms.get(
                                    p.shard.dataset), tokenizer=self._tokenizer, max_text_len=self.max_text_len)
        except (BadImage, KeyError) as e:
            stats["skipped"] += 1
            p.table.bad = True
            log.warning("%s: %s; its samples are skipped (%d skipped so far by this loader worker)",
                        p.shard.dataset, e, stats["skipped"])  # e names the shard and sample
            return None

    def loader(self, *, epoch: int, rank: int, world: int, batch_size: int, unit: int, workers: int,
               start_batch: int = 0, pin_memory: bool = False) -> "WdsLoader":
        data = WdsEpoch(self, epoch, rank, world, batch_size, unit, workers, start_batch)
        return WdsLoader(DataLoader(data, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                    prefetch_factor=4 if workers else None, persistent_workers=False))


class WdsLoader:
    """Iterates a DataLoader of WdsEpoch batches, counting the samples the workers skipped (`skipped`)."""

    def __init__(self, data: DataLoader):
        self.data, self.skipped = data, 0

    def __iter__(self):
        for batch in self.data:
            self.skipped += int(batch.pop(SKIPPED_KEY))
            yield batch
        if self.skipped:
            log.warning("this epoch skipped %d samples that could not be read (named above)", self.skipped)

