"""Which shards a run reads and who reads what: the shards of a task's split, checked once, and each epoch's
plan, a pure function of (seed, epoch, world size, batch, workers) that every rank computes alike.

An epoch concatenates the shards in a seeded order; rank r reads the contiguous samples
[r U, (r + 1) U) of that sequence, U = the per-rank samples rounded down to whole steps (the epoch's tail of fewer
than world x step samples is dropped, as DistributedSampler(drop_last=True) does).  Its batches j = 0, 1, ... are
dealt to K logical workers round-robin (j mod K, as a DataLoader takes them), and logical worker L reads its own
contiguous part of the rank's range, so each reads about 1/(world K) of the data.  A missing shard, or one whose
size differs from its manifest's (truncated), is named in one warning, counted and left out of every plan.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from vlmo_fast.data.registry import get_spec, resolve_files, spec_of_table
from vlmo_fast.data.shards import read_manifest, table_of_shard
from vlmo_fast.data.sources import expand, is_pattern_or_url, read_text, sibling, size_of
from vlmo_fast.seeds import epoch_order_seed
from vlmo_fast.run_config import RunConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """One tar shard of a split: where it is, its dataset, and where its rows and samples sit in the split."""

    url: str
    dataset: str
    table: str
    rows: int
    samples: int
    bytes: int
    first_sample: int  # index of its first sample in its table
    table_row_offset: int  # split-level index of its table's first row
    table_sample_offset: int  # split-level index of its table's first sample


@dataclass(frozen=True)
class Span:
    """Samples [lo, hi) (shard-local) of one shard."""

    shard: Shard
    lo: int
    hi: int


def _table_shards(manifest: dict, url_of, dataset: str, row_off: int, sample_off: int) -> list[Shard]:
    return [Shard(url=url_of(s["name"]), dataset=dataset, table=manifest["table"], rows=s["rows"],
                  samples=s["samples"], bytes=s["bytes"], first_sample=s["first_sample"], table_row_offset=row_off, table_sample_offset=sample_off)
            for s in manifest["shards"]]


def _totals(manifest: dict) -> tuple[int, int]:
    return sum(s["rows"] for s in manifest["shards"]), sum(s["samples"] for s in manifest["shards"])


def _directory_shards(root: str, datasets: list[str], split: str) -> list[Shard]:
    shards: list[Shard] = []
    for name in datasets:
        if not get_spec(name).splits.get(split):
            continue
        rows = samples = 0
        for path in resolve_files(root, name, split):
            if path.suffix == ".arrow":
                raise FileNotFoundError(f"data_format=wds: {path} is an arrow file, not shards; write shards with "
                                        f"`vlmo-fast convert shards {root} OUT`")
            manifest = read_manifest(path.read_text(), str(path))
            shards += _table_shards(manifest, lambda n, d=path.parent: str(d / n), name, rows, samples)
            r, s = _totals(manifest)
            rows, samples = rows + r, samples + s
    return shards


def _pattern_shards(pattern: str, datasets: list[str]) -> list[Shard]:
    urls = expand(pattern)
    by_table: dict[str, list[str]] = {}
    for url in urls:
        by_table.setdefault(table_of_shard(url.split()[-1]), []).append(url)
    shards: list[Shard] = []
    offsets: dict[str, tuple[int, int]] = {}
    for table, table_urls in by_table.items():
        spec = spec_of_table(table)
        if spec is None or spec.name not in datasets:
            raise ValueError(f"data_root={pattern}: shard {table_urls[0]} belongs to "
                             f"{spec.name if spec else 'no known dataset'}, not to the task's {', '.join(datasets)}")
        where = sibling(table_urls[0], f"{table}.shards.json")
        manifest = read_manifest(read_text(where), where)
        listed = {s["name"]: s for s in manifest["shards"]}
        wanted = {}
        for url in table_urls:
            name = url.split()[-1].rsplit("/", 1)[-1]
            if name not in listed:
                raise FileNotFoundError(f"shard {url} is not listed in its manifest {where}")
            wanted[name] = url
        rows, samples = offsets.get(spec.name, (0, 0))
        shards += [s for s in _table_shards(manifest, lambda n: wanted.get(n, ""), spec.name, rows, samples) if s.url]
        r, s = _totals(manifest)
        offsets[spec.name] = (rows + r, samples + s)
    return shards


def find_shards(data_root: str, datasets: list[str], split: str) -> list[Shard]:
    """The shards of a split of the task's datasets: data_root is a directory of tables (converted with
    `vlmo-fast convert ... --format wds`) or a pattern / URL naming the shards themselves."""
    if is_pattern_or_url(str(data_root)):
        shards = _pattern_shards(str(data_root), datasets)
    else:
        shards = _directory_shards(str(data_root), datasets, split)
    if not shards:
        raise FileNotFoundError(f"data_root={data_root}: no shards of {', '.join(datasets)} ({split})")
    return shards


@dataclass
class ShardCheck:
    """The shards that can be read and those left out (by name)."""

    good: list[Shard]
    missing: list[str]
    truncated: list[str]
    lost_samples: int


def check_shards(shards: list[Shard], threads: int = 16) -> ShardCheck:
    """Compare every shard's size with its manifest (in parallel: object stores answer slowly); warn once per
    missing or truncated shard, naming it.  Shards read through a pipe are checked when read."""
    def size(shard: Shard):
        try:
            return size_of(shard.url)
        except FileNotFoundError:
            return -1

    with ThreadPoolExecutor(max(1, min(threads, len(shards)))) as pool:
        sizes = list(pool.map(size, shards))
    check = ShardCheck([], [], [], 0)
    for shard, got in zip(shards, sizes):
        if got is None or got == shard.bytes:
            check.good.append(shard)
            continue
        check.lost_samples += shard.samples
        if got < 0:
            check.missing.append(shard.url)
            log.warning("shard %s is missing: skipped (%d samples)", shard.url, shard.samples)
        else:
            check.truncated.append(shard.url)
            log.warning("shard %s is truncated (%d of %d bytes): skipped (%d samples)", shard.url, got,
                        shard.bytes, shard.samples)
    return check


def shard_order(shards: list[Shard], seed: int, epoch: int) -> list[Shard]:
    """The epoch's seeded shard order (the same on every rank)."""
    perm = torch.randperm(len(shards), generator=torch.Generator().manual_seed(epoch_order_seed(seed, epoch))).tolist()
    return [shards[i] for i in perm]


def rank_range(total: int, world: int, rank: int, unit: int) -> tuple[int, int]:
    """Rank's samples [a, b) of the epoch's sequence: equal whole steps of `unit` samples on every rank."""
    usable = (total // world) // unit * unit
    return rank * usable, (rank + 1) * usable


def worker_batches(num_batches: int, workers: int) -> list[int]:
    """How many of the rank's batches each logical worker makes (batch j goes to worker j mod K)."""
    return [len(range(w, num_batches, workers)) for w in range(workers)]


def spans(order: list[Shard], a: int, b: int) -> list[Span]:
    """The shard pieces holding samples [a, b) of the concatenated sequence."""
    out, start = [], 0
    for shard in order:
        end = start + shard.samples
        lo, hi = max(a, start), min(b, end)
        if lo < hi:
            out.append(Span(shard, lo - start, hi - start))
        start = end
        if start >= b:
            break
    return out


def worker_spans(order: list[Shard], rank: int, world: int, batch: int, unit: int, workers: int,
                 logical: int) -> tuple[list[Span], int]:
    """Logical worker's shard pieces for this rank and epoch, and how many batches it makes."""
    total = sum(s.samples for s in order)
    a, b = rank_range(total, world, rank, unit)
    counts = worker_batches((b - a) // batch, workers)
    start = a + batch * sum(counts[:logical])
    return spans(order, start, start + batch * counts[logical]), counts[logical]


def split_shards(config: RunConfig, split: str = "train") -> tuple[list[Shard], ShardCheck]:
    """The task's shards for a split, checked (module docstring)."""
    shards = find_shards(config.data.data_root, list(config.data.datasets), split)
    return shards, check_shards(shards)

