"""SBU and GCC in the official raw layout (DATA.md of the official repository) -> the official arrow files.

    SBU: ROOT/annot.json and ROOT/images_train/XXXX/<image file>            -> sbu_{i}.arrow
    GCC: ROOT/{split}_annot.json and ROOT/images_{split}/XXXX/<image file>  -> conceptual_caption_{split}_{i}.arrow

An annot.json is a list of (image file path, caption) pairs.  As in the official writers, an image is matched to its
caption by file name (the last element of the path; a later pair with the same name replaces an earlier one), the
image files are those two folders below images_{split}, `image_id` is the file name and `split` the folder's
suffix.  Unlike the official writers (unseeded shuffle), rows follow the sorted file paths, and what is left out is
counted: pairs without an image file, image files without a caption, bad pairs.
"""
from __future__ import annotations

import json
from pathlib import Path

from vlmo_fast.data.convert import schemas
from vlmo_fast.data.convert.common import clean_texts, progress, read_image
from vlmo_fast.data.convert.writer import ArrowWriter, ConvertReport
from vlmo_fast.data.images import SkipLog


def read_annot(path: Path, skipped: SkipLog) -> dict[str, str]:
    """file name -> caption of an annot.json list of (image path, caption) pairs."""
    try:
        pairs = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"caption annotations {path} not found (official layout: DATA.md)") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(pairs, list):
        raise ValueError(f"{path}: expected a list of (image path, caption) pairs, got {type(pairs).__name__}")
    captions: dict[str, str] = {}
    for k, pair in enumerate(pairs):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
            skipped.skip("bad pair", f"{path.name}[{k}]", f"expected [image path, caption], got {pair!r}"[:200])
            continue
        captions[pair[0].replace("\\", "/").split("/")[-1]] = pair[1]
    return captions


def convert_web_layout(root: str | Path, out_dir: str | Path, *, annot: str, split: str, name: str,
                       shard_rows: int = 100_000, progress_bar: bool = True) -> ConvertReport:
    """ROOT/`annot` + ROOT/images_{split}/*/* -> sharded caption files `{name}_{i}.arrow`."""
    root = Path(root)
    report = ConvertReport(name=f"convert {name}")
    captions = read_annot(root / annot, report.skipped)
    image_dir = root / f"images_{split}"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} not found (official layout: DATA.md)")
    files = sorted(p for p in image_dir.glob("*/*") if p.is_file())
    found = set()
    writer = ArrowWriter(out_dir, name, schemas.CAPTION, shard_rows=shard_rows)
    try:
        for path in progress(files, name, enabled=progress_bar):
            key = str(path.relative_to(root))
            if path.name not in captions:
                report.skipped.skip("image without caption", key)
                continue
            found.add(path.name)
            texts = clean_texts([captions[path.name]], key, report.skipped)
            data = read_image(path, key, report.skipped) if texts else None
            if data is None:
                continue
            writer.write({"image": data, "caption": texts, "image_id": path.name, "split": split})
            report.rows += 1
            report.samples += 1
    finally:
        report.files += writer.close()
    for missing in sorted(set(captions) - found):
        report.skipped.skip("missing image", f"{annot}: {missing}", f"not under {image_dir}/*/")
    return report


def convert_sbu_layout(root, out_dir, **kw) -> ConvertReport:
    """Official SBU layout (ROOT/annot.json, ROOT/images_train) -> sbu_{i}.arrow."""
    return convert_web_layout(root, out_dir, annot="annot.json", split="train", name="sbu", **kw)


def convert_gcc_layout(root, out_dir, *, split: str = "train", **kw) -> ConvertReport:
    """Official GCC layout (ROOT/{split}_annot.json, ROOT/images_{split}) -> conceptual_caption_{split}_{i}.arrow."""
    if split not in ("train", "val"):
        raise ValueError(f"GCC split must be 'train' or 'val', got {split!r}")
    return convert_web_layout(root, out_dir, annot=f"{split}_annot.json", split=split,
                              name=f"conceptual_caption_{split}", **kw)
