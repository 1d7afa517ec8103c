"""Reading ViLT arrow files: one table per split and the official sample index (spec 6.1).

One row is one image (two for NLVR2) with a list of texts; one sample is one (row, text) pair, enumerated row by
row and text by text (the official `index_mapper`), or one row when iterating images only (retrieval evaluation).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from vlmo_fast.data.registry import MANIFEST_SUFFIX, DatasetSpec, get_spec, resolve_files, table_stem
from vlmo_fast.errors import UnknownNameError


def read_arrow(path: str | Path) -> pa.Table:
    """A whole arrow IPC file (memory-mapped, so image bytes stay on disk until read), or a table written as tar
    shards (its manifest `*.shards.json`, read into memory)."""
    path = Path(path)
    if path.name.endswith(MANIFEST_SUFFIX):
        from vlmo_fast.data.shards import read_shard_table
        return read_shard_table(path)
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except FileNotFoundError:
        raise FileNotFoundError(f"arrow file {path} not found") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"arrow file {path} is not a readable arrow IPC file: {e}") from e


class SplitTable:
    """The rows of one split of one dataset, its texts and the sample index.

    Example: SplitTable("data/", "coco", "val").texts[0] -> ["a man riding a horse", ...]
    """

    def __init__(self, data_root: str | Path, name: str, split: str, *, image_only: bool = False):
        self.spec: DatasetSpec = get_spec(name)
        self.name, self.split, self.image_only = name, split, image_only
        self.files = resolve_files(data_root, name, split)
        tables = [read_arrow(f) for f in self.files]
        if self.spec.text_column:
            for f, t in zip(self.files, tables):
                if self.spec.text_column not in t.column_names:
                    raise UnknownNameError(f"arrow file {f}: column {self.spec.text_column!r} missing "
                                   f"(columns: {', '.join(t.column_names)})")
        self.table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
        self.table_names = np.concatenate([np.full(t.num_rows, table_stem(f), dtype=object) for f, t in
                                           zip(self.files, tables)]) if tables else np.zeros(0, dtype=object)
        texts = self.table.column(self.spec.text_column).to_pylist() if tables else []
        if self.spec.remove_duplicate:
            texts = [list(dict.fromkeys(t)) for t in texts]
        self.texts: list[list[str]] = texts
        self._columns: dict[str, tuple[list[pa.Array], np.ndarray]] = {}
        sizes = np.array([t.num_rows for t in tables], dtype=np.int64)
        self._file_starts = np.cumsum(sizes) - sizes
        if image_only:
            self.rows = np.arange(self.table.num_rows, dtype=np.int64)
            self.caps = np.full(self.table.num_rows, -1, dtype=np.int64)
        else:
            counts = np.array([len(t) for t in texts], dtype=np.int64)
            self.rows = np.repeat(np.arange(len(texts), dtype=np.int64), counts)
            starts = np.cumsum(counts) - counts
            self.caps = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)

    def __len__(self) -> int:
        """Number of samples (texts, or rows when image_only)."""
        return len(self.rows)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def value(self, column: str, row: int):
        """Python value of `column` at `row` (of the concatenated split)."""
        if column not in self._columns:
            if column not in self.table.column_names:
                raise UnknownNameError(f"{self.name}/{self.split} ({', '.join(str(f) for f in self.files)}): "
                               f"column {column!r} missing")
            # Chunks are kept (combining them would copy every image into memory); a row is found by bisection.
            chunks = self.table.column(column).chunks
            lens = np.array([len(c) for c in chunks], dtype=np.int64)
            self._columns[column] = (chunks, np.cumsum(lens) - lens)
        chunks, starts = self._columns[column]
        k = int(np.searchsorted(starts, row, side="right")) - 1
        return chunks[k][row - int(starts[k])].as_py()

    def row_key(self, row: int) -> str:
        """A human-readable key of a row for error messages: file, row and image id or identifier."""
        ident = ""
        for col in ("image_id", "identifier"):
            if col in self.table.column_names:
                ident = f" {col}={self.value(col, row)}"
                break
        k = int(np.searchsorted(self._file_starts, row, side="right")) - 1
        return f"{self.table_names[row]}.arrow row {row - int(self._file_starts[k])}{ident}"
