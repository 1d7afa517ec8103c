"""Where shards come from: a local directory, a brace pattern (`shards-{000000..000123}.tar`), an fsspec URL
(`s3://bucket/coco-{000000..000099}.tar`, `file://...`, `https://...`) or a pipe (`pipe:aws s3 cp s3://b/x.tar -`).

Every shard `T-NNNNNN.tar` has the manifest `T.shards.json` beside it (shards.py), which gives its sample count;
for a pattern or URL the manifest is read from the same directory (for a pipe: the directory of the command's last
word), so every rank knows every shard's size before reading any.
"""
from __future__ import annotations

import posixpath
import subprocess
from pathlib import Path

from braceexpand import braceexpand


def is_pattern_or_url(data_root: str) -> bool:
    """Whether data_root names shards itself (a pattern or URL), not a directory of tables."""
    text = str(data_root)
    return text.startswith("pipe:") or "://" in text or "{" in text or text.endswith(".tar")


def expand(pattern: str) -> list[str]:
    """The shard URLs of a brace pattern (`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar)."""
    return list(braceexpand(str(pattern)))


def location(url: str) -> str:
    """The file part of a shard URL (for a pipe, the last word of its command)."""
    return url[len("pipe:"):].split()[-1] if url.startswith("pipe:") else url


def sibling(url: str, name: str) -> str:
    """The URL of file `name` in the directory of shard `url` (where its manifest lives)."""
    where = location(url)
    return posixpath.join(posixpath.dirname(where), name) if "://" in where else str(Path(where).parent / name)


def read_text(url: str) -> str:
    """A small text file (a manifest) through fsspec; FileNotFoundError naming it."""
    import fsspec

    try:
        with fsspec.open(url, "rt") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"shard manifest {url} not found") from None


def size_of(url: str) -> int | None:
    """The byte size of a shard, None when it cannot be known without reading it (a pipe);
    FileNotFoundError when it is missing."""
    if url.startswith("pipe:"):
        return None
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise FileNotFoundError(url)
    return int(fs.size(path))


class ShardStream:
    """A readable binary stream of one shard (context manager); a failing pipe raises OSError naming it."""

    def __init__(self, url: str):
        self.url, self._proc, self._file = url, None, None

    def __enter__(self):
        if self.url.startswith("pipe:"):
            self._proc = subprocess.Popen(self.url[len("pipe:"):], shell=True, stdout=subprocess.PIPE)
            return self._proc.stdout
        import fsspec

        self._file = fsspec.open(self.url, "rb").open()
        return self._file

    def __exit__(self, exc_type, *rest) -> None:
        if self._file is not None:
            self._file.close()
        if self._proc is not None:
            self._proc.stdout.close()
            code = self._proc.wait()
            if code > 0 and exc_type is None:  # < 0: killed by SIGPIPE when we stop reading early
                raise OSError(f"shard {self.url}: the pipe command exited with status {code}")
