"""`vlmo-fast pretrained` (the registry, and what is cached) and `vlmo-fast download NAME` (prints the file's path)."""
from __future__ import annotations

import argparse

from .cache import Cache
from .registry import PRETRAINED
from .resolve import cached_file


def _list(args: argparse.Namespace) -> int:
    cache = Cache()
    rows = [("name", "arch", "image", "heads", "task", "result", "cached")]
    for w in PRETRAINED.values():
        # Only presence and the recorded size are checked here: hashing every cached file would take minutes.
        rec, path = cache.record(w.file), cache.path(w.file)
        cached = "yes" if rec and path.is_file() and path.stat().st_size == rec.size else "no"
        rows.append((w.name, w.arch, str(w.image_size), ",".join(w.heads), w.task or "-", w.result, cached))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(n) for c, n in zip(r, widths)).rstrip())
    print(f"cache: {cache.root}")
    return 0


def _download(args: argparse.Namespace) -> int:
    for name in args.names:
        print(cached_file(name, force=args.force))
    return 0


def add_pretrained_parsers(subparsers) -> None:
    p = subparsers.add_parser("pretrained", help="list the official VLMo weights by name, and which are cached")
    p.set_defaults(run=_list)
    p = subparsers.add_parser("download", help="download official weights into the cache; prints their paths")
    p.add_argument("names", nargs="+", metavar="NAME", help="registry names (`vlmo-fast pretrained` lists them)")
    p.add_argument("--force", action="store_true", help="download again even when a verified copy is cached")
    p.set_defaults(run=_download)
