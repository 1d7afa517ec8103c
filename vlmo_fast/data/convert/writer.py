"""Streaming arrow writer for the converters: rows are buffered into record batches and written as they fill.

Files are arrow IPC *files* (`pa.ipc.new_file`), what the official `RecordBatchFileReader` reads.  With
`shard_rows`, output is split into `{name}_0.arrow`, `{name}_1.arrow`, ... of at most that many rows each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from vlmo_fast.data.images import SkipLog
from vlmo_fast.errors import UnknownNameError


class ArrowWriter:
    """Write rows (dicts keyed by the schema's field names) to `{out_dir}/{name}.arrow` or shards.

    Example: with ArrowWriter(out, "coco_caption_karpathy_val", schemas.CAPTION) as w: w.write(row)
    """

    def __init__(self, out_dir: str | Path, name: str, schema: pa.Schema, *, shard_rows: int | None = None,
                 batch_rows: int = 256):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name, self.schema = name, schema
        self.shard_rows, self.batch_rows = shard_rows, batch_rows
        self.files: list[Path] = []
        self.rows = 0
        self._buffer: list[dict] = []
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._shard_filled = 0

    def _open(self) -> None:
        stem = self.name if self.shard_rows is None else f"{self.name}_{len(self.files)}"
        path = self.out_dir / f"{stem}.arrow"
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self.files.append(path)
        self._shard_filled = 0

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._open()
        batch = pa.RecordBatch.from_pylist(self._buffer, schema=self.schema)
        self._writer.write_batch(batch)
        self._shard_filled += len(self._buffer)
        self._buffer = []
        if self.shard_rows is not None and self._shard_filled >= self.shard_rows:
            self._close_file()

    def write(self, row: dict) -> None:
        missing = [f.name for f in self.schema if f.name not in row]
        if missing:
            raise UnknownNameError(f"{self.name}: row lacks column(s) {', '.join(missing)}")
        self._buffer.append(row)
        self.rows += 1
        limit = self.batch_rows
        if self.shard_rows is not None:
            limit = min(limit, self.shard_rows - self._shard_filled)
        if len(self._buffer) >= limit:
            self._flush()

    def close(self) -> list[Path]:
        """Flush and close; an empty output still gets one (empty) file, so readers find the split."""
        self._flush()
        if not self.files:
            self._open()
        self._close_file()
        return self.files

    def __enter__(self) -> "ArrowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ConvertReport:
    """What a converter wrote: files, rows, samples (texts) and the skipped items with their reasons."""

    name: str
    files: list[Path] = field(default_factory=list)
    rows: int = 0
    samples: int = 0
    skipped: SkipLog | None = None

    def __post_init__(self) -> None:
        if self.skipped is None:
            self.skipped = SkipLog(self.name)

    def summary(self) -> str:
        return (f"{self.name}: wrote {self.rows} rows ({self.samples} texts) to {len(self.files)} file(s); "
                f"{self.skipped.summary()}")
