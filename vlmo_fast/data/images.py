"""Image decoding shared by the readers, the converters and the PIL pipeline.

Every image is decoded to RGB at read time, as the official `Image.open(...).convert("RGB")` does: grayscale,
palette, CMYK and alpha images become 3-channel RGB (alpha is dropped, not composited, as officially).  A file that
does not decode completely (corrupt or truncated) raises `BadImage` naming its key, so callers can skip and count it.
"""
from __future__ import annotations

import io
import logging
from collections import Counter

from PIL import Image, ImageFile

log = logging.getLogger(__name__)

# PIL's default refuses truncated files with an error, which is what we want: truncated images are skipped.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class BadImage(ValueError):
    """An image that cannot be decoded; the message names its key (file name, image id or row)."""


def decode_rgb(data: bytes, key: str = "?") -> Image.Image:
    """Decode encoded image bytes to a fully loaded RGB PIL image; raises BadImage(key) on any failure."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise BadImage(f"image {key}: no image bytes")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # forces the full decode, so truncated data fails here and not later in a transform
        return img if img.mode == "RGB" else img.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise BadImage(f"image {key}: cannot decode ({type(e).__name__}: {e})") from e


def check_image(data: bytes, key: str) -> None:
    """Raise BadImage unless `data` decodes (the converters' gate before writing a row)."""
    decode_rgb(data, key)


class SkipLog:
    """Counts skipped items by reason and logs each with its key (the converters' and readers' ledger)."""

    def __init__(self, what: str):
        self.what = what
        self.counts: Counter[str] = Counter()
        self.keys: dict[str, list[str]] = {}

    def skip(self, reason: str, key: str, detail: str = "") -> None:
        self.counts[reason] += 1
        self.keys.setdefault(reason, []).append(key)
        log.warning("%s: skipped %s (%s)%s", self.what, key, reason, f": {detail}" if detail else "")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return f"{self.what}: nothing skipped"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        return f"{self.what}: skipped {self.total} ({parts})"
