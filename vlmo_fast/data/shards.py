"""WebDataset tar shards of the ViLT tables: the layout, the writer and the reader of one shard.

One arrow row (one image, or an NLVR2 pair, with all its texts) is one tar sample `{key}.*`:
- `{key}.jpg` / `.png` / ...: the `image` column (NLVR2: `{key}.image_0.jpg`, `{key}.image_1.jpg`);
- `{key}.json`: every other column as JSON (caption / questions, answers, labels, scores, ids) plus `_row`, the
  row in its arrow table, and `_first_sample`, the index of the row's first text among the table's samples.
The key is `{table}-{row:09d}` (no dot: webdataset and DALI cut the key at the first dot of the file name).
A table `T` becomes `T-000000.tar`, `T-000001.tar`, ... (at most `max_samples` rows or about `max_bytes` each),
each with its DALI index `T-000000.idx` (the format of DALI's wds2idx, v1.2: "v1.2 N", then per sample
"ext offset size name ..." with the data offset of every member), and the manifest `T.shards.json`: the arrow
schema and per shard its name, rows, samples (texts, de-duplicated as the reader does), first row, first sample and
byte size (a shard of another size is truncated).
"""
from __future__ import annotations

import base64
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from vlmo_fast.data.registry import MANIFEST_SUFFIX
FORMAT = "vlmo-fast-wds-1"
_MAGIC = ((b"\xff\xd8", "jpg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"), (b"RIFF", "webp"))


class ShardError(OSError):
    """A shard that is missing, truncated or unreadable; the message names it."""


def image_ext(data: bytes) -> str:
    """The file extension of encoded image bytes, from their magic number ('img' when unknown)."""
    return next((ext for magic, ext in _MAGIC if bytes(data[:len(magic)]) == magic), "img")


def member_column(ext: str) -> str:
    """The arrow column of a member's extension: `jpg` -> image, `image_0.jpg` -> image_0."""
    return ext.split(".")[0] if "." in ext else "image"


def shard_name(table: str, k: int) -> str:
    return f"{table}-{k:06d}.tar"


def table_of_shard(name: str) -> str:
    """`coco_caption_karpathy_val-000003.tar` -> `coco_caption_karpathy_val`."""
    stem = name.rsplit("/", 1)[-1]
    if not stem.endswith(".tar") or "-" not in stem:
        raise ShardError(f"shard {name}: expected a name TABLE-NNNNNN.tar")
    return stem[:-4].rsplit("-", 1)[0]


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


@dataclass
class ShardStats:
    name: str
    rows: int = 0
    samples: int = 0
    first_row: int = 0
    first_sample: int = 0
    bytes: int = 0


class ShardWriter:
    """Write rows of one table as shards, index files and the manifest (module docstring).

    Example: with ShardWriter(out, "coco_caption_karpathy_val", schema) as w: w.write(row, n_samples)
    """

    def __init__(self, out_dir: str | Path, table: str, schema: pa.Schema, *, max_samples: int = 10_000,
                 max_bytes: int = 1 << 30):
        if max_samples < 1:
            raise ValueError(f"shard size must be at least 1 row, got {max_samples}")
        self.out_dir, self.table, self.schema = Path(out_dir), table, schema
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        self.shards: list[ShardStats] = []
        self.rows = self.samples = 0
        self._tar: tarfile.TarFile | None = None
        self._index: list[str] = []

    def _open(self) -> None:
        stats = ShardStats(shard_name(self.table, len(self.shards)), first_row=self.rows, first_sample=self.samples)
        self.shards.append(stats)
        self._tar = tarfile.open(self.out_dir / stats.name, "w", format=tarfile.USTAR_FORMAT)
        self._index = []

    def _add(self, name: str, data: bytes) -> tuple[int, int]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))
        padded = (len(data) + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
        return self._tar.offset - padded, len(data)  # where the member's data starts

    def write(self, row: dict, samples: int) -> None:
        """Add one row (a dict of the schema's columns) holding `samples` training samples (its texts)."""
        if self._tar is None:
            self._open()
        stats = self.shards[-1]
        key = f"{self.table}-{self.rows:09d}"
        meta = {k: v for k, v in row.items() if k not in self.binary}
        meta.update(_row=self.rows, _first_sample=self.samples)
        members = [(f"{key}.{'' if col == 'image' else col + '.'}{image_ext(row[col])}", bytes(row[col]))
                   for col in self.binary if row.get(col) is not None]
        members.append((f"{key}.json", json.dumps(meta).encode()))
        entry = []
        for name, data in members:
            offset, size = self._add(name, data)
            entry.append(f"{name[len(key) + 1:]} {offset} {size} {name}")
        self._index.append(" ".join(entry))
        stats.rows += 1
        stats.samples += samples
        self.rows += 1
        self.samples += samples
        if stats.rows >= self.max_samples or self._tar.offset >= self.max_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        stats = self.shards[-1]
        stats.bytes = (self.out_dir / stats.name).stat().st_size
        idx = self.out_dir / stats.name.replace(".tar", ".idx")
        idx.write_text(f"v1.2 {len(self._index)}\n" + "".join(line + "\n" for line in self._index))
        self._tar = None

    def close(self) -> Path:
        """Close the last shard and write the manifest; returns its path.  An empty table gets no shard."""
        self._close_shard()
        manifest = self.out_dir / f"{self.table}{MANIFEST_SUFFIX}"
        manifest.write_text(json.dumps({"format": FORMAT, "table": self.table, "schema": encode_schema(self.schema),
                                        "shards": [vars(s) for s in self.shards]}, indent=1))
        return manifest

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_manifest(text: str, where: str) -> dict:
    """A parsed manifest; ValueError naming `where` when it is not one."""
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"shard manifest {where} is not JSON: {e}") from e
    if manifest.get("format") != FORMAT:
        raise ValueError(f"shard manifest {where}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def iter_records(stream, name: str):
    """Yield (key, {extension: bytes}) per sample of a tar stream; ShardError naming the shard when it is
    truncated or not a tar file (the samples before the damage are yielded first)."""
    key, members = None, {}
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                k, _, ext = base.partition(".")
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise tarfile.ReadError(f"member {info.name}: {len(data)} of {info.size} bytes")
                if k != key and key is not None:
                    yield key, members
                    members = {}
                key = k
                members[ext] = data
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"shard {name} is truncated or unreadable after sample {key}: {e}") from e
    if key is not None:
        yield key, members


def record_row(members: dict[str, bytes], key: str, where: str) -> dict:
    """The arrow row of one tar sample (binary columns from the members, the rest from its JSON)."""
    if "json" not in members:
        raise ValueError(f"{where} sample {key}: no {key}.json")
    try:
        row = json.loads(members["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where} sample {key}: {key}.json is not JSON: {e}") from e
    for ext, data in members.items():
        if ext != "json":
            row[member_column(ext)] = data
    return row


def read_shard_table(manifest_path: str | Path) -> pa.Table:
    """A whole table from its local shards, in memory (evaluation splits; training streams, see wds.py)."""
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path.read_text(), str(manifest_path))
    schema = decode_schema(manifest["schema"])
    rows = []
    for shard in manifest["shards"]:
        path = manifest_path.parent / shard["name"]
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} (listed in {manifest_path}) not found")
        with open(path, "rb") as f:
            rows += [record_row(m, k, str(path)) for k, m in iter_records(f, str(path))]
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)
