"""A weight's name -> its verified file in the cache, downloading it when needed (and allowed)."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: concurrent downloads into one cache are not serialised there
    fcntl = None

from .cache import Cache, OfflineError, Record, offline, source_url
from .download import fetch
from .registry import PRETRAINED, PretrainedWeight, get_weight

log = logging.getLogger(__name__)


def _download(weight: PretrainedWeight, cache: Cache, progress: bool) -> Path:
    url = source_url(weight.file, weight.url)
    cache.root.mkdir(parents=True, exist_ok=True)
    part = cache.partial(weight.file)
    log.info("downloading %s from %s", weight.file, url)
    size, digest = fetch(url, part, progress=progress)
    cache.write_record(weight.file, Record(size=size, sha256=digest, url=url,
                                           downloaded=time.strftime("%Y-%m-%dT%H:%M:%S")))
    path = cache.path(weight.file)
    os.replace(part, path)  # the file appears under its name only once whole and recorded
    return path


@contextlib.contextmanager
def _cache_lock(cache: Cache) -> Iterator[None]:
    """Hold the cache's lock file: the ranks of a distributed run resolving one name download it once."""
    cache.root.mkdir(parents=True, exist_ok=True)
    with open(cache.root / ".lock", "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def cached_file(name: str, cache: Cache | None = None, progress: bool = True, force: bool = False) -> Path:
    """The verified cached file of a registered weight, downloaded first when it is missing, unrecorded, or fails
    its size or sha256 check (a corrupt file is never returned).  VLMO_FAST_OFFLINE=1 forbids downloading.

    Example: cached_file("vlmo_base_patch16_224")  ->  ~/.cache/vlmo_fast/vlmo_base_patch16_224.pt
    """
    weight = get_weight(name)
    cache = cache or Cache()
    if not force and cache.problem(weight.file) is None:
        return cache.path(weight.file)
    if offline():
        return _offline_file(name, weight, cache, force)
    with _cache_lock(cache):
        # Checked again under the lock: another process may have fetched the file meanwhile.
        problem = "a fresh download was asked for" if force else cache.problem(weight.file)
        if problem is None:
            return cache.path(weight.file)
        path = cache.path(weight.file)
        if path.is_file():
            log.warning("%s: fetching it again", problem)
            path.unlink()
        return _download(weight, cache, progress)


def _offline_file(name: str, weight: PretrainedWeight, cache: Cache, force: bool) -> Path:
    """The cached file when the network is forbidden: a hand-placed file is recorded as found, else an error."""
    path = cache.path(weight.file)
    problem = "a fresh download was asked for" if force else cache.problem(weight.file)
    if path.is_file() and cache.record(weight.file) is None and not force:
        log.warning("%s; recording it as found (VLMO_FAST_OFFLINE=1 leaves nothing to check it against)", problem)
        cache.adopt(weight.file, weight.url)
        return path
    raise OfflineError(f"VLMO_FAST_OFFLINE=1 and the weight {name!r} ({weight.file}) cannot be used from the "
                       f"cache: {problem}. Download it where there is network (vlmo-fast download {name}) "
                       f"into {cache.root} ($VLMO_FAST_CACHE), or unset VLMO_FAST_OFFLINE")


def resolve_load_path(value: str, cache: Cache | None = None) -> str:
    """A `load_path` value: a registered weight's name becomes its cached file; an existing path (or anything
    else) is returned unchanged, so paths always win over names."""
    if value and value in PRETRAINED and not Path(value).exists():
        return str(cached_file(value, cache))
    return value
