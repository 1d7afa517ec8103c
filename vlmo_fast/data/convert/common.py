"""Helpers shared by the converters: reading and checking image files, cleaning captions, progress bars."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, TypeVar

from tqdm import tqdm

from vlmo_fast.data.images import BadImage, SkipLog, check_image

T = TypeVar("T")


def read_image(path: Path, key: str, skipped: SkipLog) -> bytes | None:
    """The bytes of an image file, or None (skipped and counted) if it is missing, corrupt or truncated.

    The bytes are stored as they are (JPEG stays JPEG); conversion to RGB happens when they are decoded.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        skipped.skip("missing image", key, f"{path}: {e.strerror or e}")
        return None
    try:
        check_image(data, key)
    except BadImage as e:
        skipped.skip("corrupt image", key, str(e))
        return None
    return data


def clean_texts(texts: Iterable[str], key: str, skipped: SkipLog, what: str = "caption") -> list[str]:
    """Strip texts and drop (skip and count) empty ones; over-long texts are kept (the tokenizer truncates)."""
    out = []
    for k, t in enumerate(texts):
        t = (t or "").strip() if isinstance(t, str) or t is None else str(t).strip()
        if t:
            out.append(t)
        else:
            skipped.skip(f"empty {what}", f"{key} {what} {k}")
    return out


def progress(items: Iterable[T], desc: str, total: int | None = None, enabled: bool = True) -> Iterable[T]:
    """A tqdm bar over `items` (to stderr), or the items themselves when disabled."""
    return tqdm(items, desc=desc, total=total, unit="item", dynamic_ncols=True) if enabled else items
