"""Arrow tables -> WebDataset tar shards (the layout of vlmo_fast/data/shards.py).

`vlmo-fast convert shards ARROW_DIR OUT_DIR` converts every `*.arrow` of a directory (answer vocabularies
`*_answers.json` are copied beside); `vlmo-fast convert DATASET ... --format wds` runs the dataset's converter into
a scratch directory under OUT_DIR and converts that, so every dataset and the synthetic data exist in both forms.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from vlmo_fast.data.arrow import read_arrow
from vlmo_fast.data.convert.common import progress
from vlmo_fast.data.convert.writer import ConvertReport
from vlmo_fast.data.registry import spec_of_table
from vlmo_fast.data.shards import ShardWriter


def row_samples(row: dict, table: str) -> int:
    """The training samples of a row: its texts, de-duplicated where the dataset's reader de-duplicates."""
    spec = spec_of_table(table)
    column = spec.text_column if spec else "caption"
    texts = row.get(column) or []
    return len(dict.fromkeys(texts)) if spec is None or spec.remove_duplicate else len(texts)


def table_to_shards(arrow_path: Path, out_dir: Path, *, max_samples: int = 10_000, max_bytes: int = 1 << 30,
                    progress_bar: bool = False) -> ShardWriter:
    """Write one arrow table as shards; returns the closed writer (its shards and counts)."""
    table = read_arrow(arrow_path)
    writer = ShardWriter(out_dir, arrow_path.stem, table.schema, max_samples=max_samples, max_bytes=max_bytes)
    with writer:
        for batch in progress(table.to_batches(max_chunksize=256), arrow_path.stem, enabled=progress_bar):
            for row in batch.to_pylist():
                writer.write(row, row_samples(row, arrow_path.stem))
    return writer


def arrow_to_shards(arrow_dir: str | Path, out_dir: str | Path, *, max_samples: int = 10_000,
                    max_bytes: int = 1 << 30, progress_bar: bool = True, name: str = "shards") -> ConvertReport:
    """Convert every arrow table of `arrow_dir` to shards under `out_dir`.

    Example: arrow_to_shards("arrows/", "shards/", max_samples=5000)
    """
    arrow_dir, out_dir = Path(arrow_dir), Path(out_dir)
    tables = sorted(arrow_dir.glob("*.arrow"))
    if not tables:
        raise FileNotFoundError(f"no arrow file (*.arrow) in {arrow_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ConvertReport(name=name)
    for path in tables:
        w = table_to_shards(path, out_dir, max_samples=max_samples, max_bytes=max_bytes, progress_bar=progress_bar)
        report.files += [out_dir / s.name for s in w.shards]
        report.rows += w.rows
        report.samples += w.samples
    for vocab in arrow_dir.glob("*_answers.json"):
        shutil.copyfile(vocab, out_dir / vocab.name)
    return report


def convert_as_shards(convert: Callable[[Path], ConvertReport], out_dir: str | Path, *, max_samples: int,
                      progress_bar: bool) -> ConvertReport:
    """Run `convert(scratch_dir)` (a converter writing arrow files), then write its tables as shards in out_dir;
    the skipped items of the converter are kept in the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".arrow-") as scratch:
        arrow_report = convert(Path(scratch))
        report = arrow_to_shards(scratch, out_dir, max_samples=max_samples, progress_bar=progress_bar,
                                 name=arrow_report.name)
    report.skipped = arrow_report.skipped
    return report
