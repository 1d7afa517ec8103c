"""COCO and Flickr30K Karpathy splits (dataset_coco.json / dataset_flickr30k.json) -> caption arrow files.

Input: the Karpathy JSON `{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}` and the image
root (COCO: `{root}/{filepath}/{filename}`, e.g. val2014/COCO_val2014_...jpg; F30K: `{root}/{filename}`).
Output: `{prefix}_{split}.arrow` per split (coco: train, restval, val, test; f30k: train, val, test) with the
CAPTION schema: image bytes, the raw sentences, image_id = file name, split.
"""
from __future__ import annotations

import json
from pathlib import Path

from vlmo_fast.data.convert import schemas
from vlmo_fast.data.convert.common import clean_texts, progress, read_image
from vlmo_fast.data.convert.writer import ArrowWriter, ConvertReport

PREFIX = {"coco": "coco_caption_karpathy", "f30k": "f30k_caption_karpathy"}
SPLITS = {"coco": ("train", "restval", "val", "test"), "f30k": ("train", "val", "test")}


def convert_karpathy(karpathy_json: str | Path, image_root: str | Path, out_dir: str | Path, *,
                     dataset: str = "coco", progress_bar: bool = True) -> ConvertReport:
    """Write the Karpathy splits of `dataset` ("coco" or "f30k").

    Example: convert_karpathy("dataset_coco.json", "coco/", "arrows/", dataset="coco")
    """
    if dataset not in PREFIX:
        raise ValueError(f"dataset must be one of {', '.join(PREFIX)}, got {dataset!r}")
    karpathy_json, image_root = Path(karpathy_json), Path(image_root)
    try:
        images = json.loads(karpathy_json.read_text())["images"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{karpathy_json}: not a Karpathy split file with an 'images' list ({e})") from e
    report = ConvertReport(name=f"convert {dataset}")
    writers = {s: ArrowWriter(out_dir, f"{PREFIX[dataset]}_{s}", schemas.CAPTION) for s in SPLITS[dataset]}
    try:
        for k, entry in enumerate(progress(images, f"{dataset} karpathy", enabled=progress_bar)):
            filename = entry.get("filename")
            split = entry.get("split")
            if not filename or split not in writers:
                report.skipped.skip("bad entry", f"{karpathy_json.name} image {k}",
                                    f"filename={filename!r} split={split!r}")
                continue
            captions = clean_texts([s.get("raw", "") for s in entry.get("sentences", [])], filename, report.skipped)
            if not captions:
                report.skipped.skip("no caption", filename)
                continue
            data = read_image(image_root / entry.get("filepath", "") / filename, filename, report.skipped)
            if data is None:
                continue
            writers[split].write({"image": data, "caption": captions, "image_id": filename, "split": split})
            report.rows += 1
            report.samples += len(captions)
    finally:
        for w in writers.values():
            report.files += w.close()
    return report
