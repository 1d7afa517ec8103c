"""Web caption lists (SBU, GCC), Visual Genome region descriptions and plain text (WikiBK) -> arrow files.

- SBU / GCC: a tab-separated file of `caption<TAB>image path` lines (path relative to the image root); written
  in shards of `shard_rows` rows (official: 100k) as `sbu_{i}` / `conceptual_caption_{split}_{i}`.
- VG: `region_descriptions.json` = `[{"id": image_id, "regions": [{"phrase", "x", "y", "width", "height"}]}]`
  with images `{image_id}.jpg` anywhere under the image root (VG_100K, VG_100K_2, ...); one row per image.
- WikiBK: text files with one sentence per line -> `wikibk_{split}_{i}` (image "None", source = file name).
"""
from __future__ import annotations

import json
from pathlib import Path

from vlmo_fast.data.convert import schemas
from vlmo_fast.data.convert.common import clean_texts, progress, read_image
from vlmo_fast.data.convert.writer import ArrowWriter, ConvertReport


def convert_caption_list(tsv: str | Path, image_root: str | Path, out_dir: str | Path, *, name: str,
                         split: str = "train", shard_rows: int = 100_000,
                         progress_bar: bool = True) -> ConvertReport:
    """A `caption<TAB>image` list to sharded caption files `{name}_{i}.arrow`.

    Example: convert_caption_list("sbu.tsv", "sbu_images/", "arrows/", name="sbu")
    """
    tsv, image_root = Path(tsv), Path(image_root)
    report = ConvertReport(name=f"convert {name}")
    writer = ArrowWriter(out_dir, name, schemas.CAPTION, shard_rows=shard_rows)
    try:
        with open(tsv, encoding="utf-8") as f:
            for lineno, line in enumerate(progress(f, name, enabled=progress_bar), 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                caption, sep, image = line.rpartition("\t")
                key = f"{tsv.name}:{lineno} ({image.strip()})"
                if not sep or not image.strip():
                    report.skipped.skip("bad line", f"{tsv.name}:{lineno}", "expected caption<TAB>image")
                    continue
                captions = clean_texts([caption], key, report.skipped)
                if not captions:
                    continue
                data = read_image(image_root / image.strip(), key, report.skipped)
                if data is None:
                    continue
                writer.write({"image": data, "caption": captions, "image_id": image.strip(), "split": split})
                report.rows += 1
                report.samples += 1
    finally:
        report.files += writer.close()
    return report


def convert_sbu(tsv, image_root, out_dir, **kw) -> ConvertReport:
    """SBU captions -> sbu_{i}.arrow (train only, as officially)."""
    return convert_caption_list(tsv, image_root, out_dir, name="sbu", split="train", **kw)


def convert_gcc(tsv, image_root, out_dir, *, split: str = "train", **kw) -> ConvertReport:
    """Conceptual Captions -> conceptual_caption_{split}_{i}.arrow (split "train" or "val")."""
    if split not in ("train", "val"):
        raise ValueError(f"GCC split must be 'train' or 'val', got {split!r}")
    return convert_caption_list(tsv, image_root, out_dir, name=f"conceptual_caption_{split}", split=split, **kw)


def convert_vg(regions_json: str | Path, image_root: str | Path, out_dir: str | Path, *,
               progress_bar: bool = True) -> ConvertReport:
    """Visual Genome region descriptions -> vg.arrow.  Example: convert_vg("region_descriptions.json", "vg/", "out/")"""
    regions_json, image_root = Path(regions_json), Path(image_root)
    try:
        entries = json.loads(regions_json.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{regions_json}: cannot read region descriptions ({e})") from e
    # Image files may sit in several folders (VG_100K, VG_100K_2): index them once by stem.
    paths = {p.stem: p for p in image_root.rglob("*.jpg")}
    report = ConvertReport(name="convert vg")
    writer = ArrowWriter(out_dir, "vg", schemas.VG)
    try:
        for entry in progress(entries, "vg", enabled=progress_bar):
            iid = str(entry.get("id", entry.get("image_id", "")))
            key = f"vg image {iid}"
            regions = [r for r in entry.get("regions", []) if isinstance(r, dict)]
            kept = [r for r, t in zip(regions, [(r.get("phrase") or "").strip() for r in regions]) if t]
            for k in range(len(regions) - len(kept)):
                report.skipped.skip("empty caption", f"{key} region {k}")
            if not kept:
                report.skipped.skip("no caption", key)
                continue
            if iid not in paths:
                report.skipped.skip("missing image", key, f"{iid}.jpg not under {image_root}")
                continue
            data = read_image(paths[iid], key, report.skipped)
            if data is None:
                continue
            writer.write({"image": data, "caption": [r["phrase"].strip() for r in kept],
                          "width": [int(r.get("width", 0)) for r in kept],
                          "height": [int(r.get("height", 0)) for r in kept],
                          "x": [int(r.get("x", 0)) for r in kept], "y": [int(r.get("y", 0)) for r in kept],
                          "image_id": iid})
            report.rows += 1
            report.samples += len(kept)
    finally:
        report.files += writer.close()
    return report


def convert_wikibk(text_files: list[str | Path], out_dir: str | Path, *, split: str = "train",
                   shard_rows: int = 100_000, progress_bar: bool = True) -> ConvertReport:
    """Plain text (one sentence per line) -> wikibk_{split}_{i}.arrow.  Blank lines are skipped and counted.

    Example: convert_wikibk(["wiki.txt", "books.txt"], "out/", split="train")
    """
    report = ConvertReport(name="convert wikibk")
    writer = ArrowWriter(out_dir, f"wikibk_{split}", schemas.TEXT, shard_rows=shard_rows)
    try:
        for path in map(Path, text_files):
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(progress(f, f"wikibk {path.name}", enabled=progress_bar), 1):
                    texts = clean_texts([line], f"{path.name}:{lineno}", report.skipped, what="line")
                    if not texts:
                        continue
                    writer.write({"image": "None", "caption": texts, "source": path.name, "split": split})
                    report.rows += 1
                    report.samples += 1
    finally:
        report.files += writer.close()
    return report
