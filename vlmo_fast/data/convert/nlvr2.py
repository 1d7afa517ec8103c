"""NLVR2 JSONL + image pairs -> nlvr2_{train,dev,test1}.arrow.

Input layout (the official download): `{json_dir}/{train,dev,test1}.json`, one JSON object per line with
`identifier` ("train-10171-0-0": pair id + statement index), `sentence`, `label` ("True"/"False") and, for
train, `directory`; images `{root}/images/train/{directory}/{pair}-img0.png` (and -img1) for train,
`{root}/{dev,test1}/{pair}-img{0,1}.png` otherwise.  One row per image pair, with all its statements.
"""
from __future__ import annotations

import json
from pathlib import Path

from vlmo_fast.data.convert import schemas
from vlmo_fast.data.convert.common import progress, read_image
from vlmo_fast.data.convert.writer import ArrowWriter, ConvertReport

SPLITS = ("train", "dev", "test1")


def _pair_dir(root: Path, split: str, entry: dict) -> Path:
    return root / "images" / "train" / str(entry.get("directory", "")) if split == "train" else root / split


def convert_nlvr2(root: str | Path, out_dir: str | Path, *, json_dir: str | Path | None = None,
                  progress_bar: bool = True) -> ConvertReport:
    """Write the NLVR2 arrow files of every split whose JSONL exists (at least one must).

    Example: convert_nlvr2("nlvr2/", "arrows/", json_dir="nlvr2/nlvr2/data")
    """
    root = Path(root)
    json_dir = Path(json_dir) if json_dir else (root / "nlvr2" / "data" if (root / "nlvr2" / "data").is_dir()
                                                else root)
    found = [s for s in SPLITS if (json_dir / f"{s}.json").is_file()]
    if not found:
        raise FileNotFoundError(f"NLVR2: none of {', '.join(str(json_dir / (s + '.json')) for s in SPLITS)} found")
    report = ConvertReport(name="convert nlvr2")
    for split in found:
        pairs: dict[str, list[dict]] = {}
        path = json_dir / f"{split}.json"
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    pair = entry["identifier"].rsplit("-", 1)[0]
                except (ValueError, KeyError, AttributeError) as e:
                    report.skipped.skip("bad line", f"{path.name}:{lineno}", str(e))
                    continue
                if not (entry.get("sentence") or "").strip():
                    report.skipped.skip("empty caption", entry["identifier"])
                    continue
                if entry.get("label") not in ("True", "False"):
                    report.skipped.skip("bad label", entry["identifier"], f"label={entry.get('label')!r}")
                    continue
                pairs.setdefault(pair, []).append(entry)
        with ArrowWriter(out_dir, f"nlvr2_{split}", schemas.NLVR2) as writer:
            for pair, entries in progress(pairs.items(), f"nlvr2 {split}", len(pairs), progress_bar):
                folder = _pair_dir(root, split, entries[0])
                img0 = read_image(folder / f"{pair}-img0.png", f"{pair}-img0", report.skipped)
                img1 = read_image(folder / f"{pair}-img1.png", f"{pair}-img1", report.skipped) if img0 else None
                if img0 is None or img1 is None:
                    continue
                writer.write({"image_0": img0, "image_1": img1, "questions": [e["sentence"].strip() for e in entries],
                              "answers": [e["label"] for e in entries], "identifier": pair})
                report.rows += 1
                report.samples += len(entries)
        report.files += writer.files
    return report
