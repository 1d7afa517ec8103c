"""Streaming a file over HTTP(S) into `<name>.part` with a progress bar, resuming it with a Range request after
an interruption (a full download where the server ignores Range), and checking the announced size.

Only the standard library talks to the network (urllib), so nothing beyond the package's dependencies is needed.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .cache import HASH_CHUNK, DownloadError

log = logging.getLogger(__name__)

CHUNK = 1 << 16
TIMEOUT_S = 60
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class InterruptedDownload(DownloadError):
    """The stream ended before the announced size: what arrived stays in the partial file for a resume."""


def _open(url: str, start: int):
    """The response for `url`, asking for the bytes from `start` on when there is a partial file."""
    request = urllib.request.Request(url, headers={"User-Agent": "vlmo-fast"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # the partial file is not a prefix the server knows: start over
            return None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{url}: {getattr(err, 'reason', err)}") from err


def _expected_total(response, start: int) -> tuple[int, int | None]:
    """(offset the body starts at, total size of the file or None when the server does not say)."""
    if response.status == 206:
        m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != start:
            raise DownloadError(f"{response.url}: a partial response without a usable Content-Range "
                                f"({response.headers.get('Content-Range')!r}) for a request from byte {start}")
        return start, None if m.group(3) == "*" else int(m.group(3))
    length = response.headers.get("Content-Length")
    return 0, int(length) if length is not None else None


def _hash_prefix(path: Path, offset: int) -> "hashlib._Hash":
    h = hashlib.sha256()
    if offset:
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
    return h


def fetch_once(url: str, part: Path, progress: bool = True) -> tuple[int, str]:
    """One request: continue or restart `part`; returns (size, sha256) when the whole file arrived, and raises
    DownloadError when the stream ends early (the bytes received stay in `part` for the next try)."""
    start = part.stat().st_size if part.is_file() else 0
    response = _open(url, start)
    if response is None:
        part.unlink()
        start = 0
        response = _open(url, 0)
    with response:
        offset, total = _expected_total(response, start)
        if offset == 0 and start:
            log.info("%s does not honour Range requests: downloading the whole file again", url)
        h = _hash_prefix(part, offset)
        done = offset
        with open(part, "r+b" if offset else "wb") as f, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
                     disable=not progress) as bar:
            f.seek(offset)
            f.truncate()
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, OSError) as err:
                raise InterruptedDownload(f"{url}: connection lost after {done} bytes ({err})") from err
    if total is not None and done != total:
        raise InterruptedDownload(f"{url}: received {done} of {total} bytes")
    return done, h.hexdigest()


def fetch(url: str, part: Path, attempts: int = 3, progress: bool = True) -> tuple[int, str]:
    """fetch_once, resumed after interruptions up to `attempts` times in all."""
    for attempt in range(1, attempts + 1):
        try:
            return fetch_once(url, part, progress)
        except InterruptedDownload as err:
            have = part.stat().st_size if part.is_file() else 0
            if attempt == attempts:
                raise DownloadError(f"{err}; the {have} bytes received stay in {part}: run again to resume") from err
            log.warning("%s; resuming from byte %d (attempt %d of %d)", err, have, attempt + 1, attempts)
    raise AssertionError("unreachable")
