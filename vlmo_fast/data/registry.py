"""The ViLT-format datasets: which arrow files make each split, which column holds the text (spec 6.1).

A file name ending in `_*` is a sharded family (`conceptual_caption_train_0`, `_1`, ...): every consecutive shard
from 0 is used, and none present is an error.  The official lists fixed shard counts (30 GCC, 9 SBU, 50 WikiBK)
and silently skips missing files (spec 8.20); here a missing file is an error naming it, and a family may hold
fewer shards (a partial download or a small conversion) as long as they are consecutive.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmo_fast.errors import UnknownNameError

MANIFEST_SUFFIX = ".shards.json"  # a table written as tar shards (vlmo_fast.data.shards)


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """One dataset of the official code: its kind of sample, its splits and its text column."""

    name: str
    kind: str  # "caption" (image, text), "vqa", "nlvr2" or "text" (text only): picks the sample builder
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> arrow file names (no .arrow)
    text_column: str = "caption"
    # Official caption datasets de-duplicate each row's texts (VQA and NLVR2 do not); we keep first-seen order
    # where the official `list(set(...))` order depends on Python's string hashing.
    remove_duplicate: bool = True
    # Official training transform; the synthetic data keeps positions and left/right meaningful, so no crop/flip.
    train_transform: str = "square_transform_randaug"


def _spec(name: str, kind: str, splits: dict[str, tuple[str, ...]], **kw) -> DatasetSpec:
    return DatasetSpec(name=name, kind=kind, splits=splits, **kw)


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    _spec("coco", "caption", {"train": ("coco_caption_karpathy_train", "coco_caption_karpathy_restval"),
                              "val": ("coco_caption_karpathy_val",), "test": ("coco_caption_karpathy_test",)}),
    # As officially (ViLT's split), Flickr30K trains on train+val and validates on test.
    _spec("f30k", "caption", {"train": ("f30k_caption_karpathy_train", "f30k_caption_karpathy_val"),
                              "val": ("f30k_caption_karpathy_test",), "test": ("f30k_caption_karpathy_test",)}),
    _spec("gcc", "caption", {"train": ("conceptual_caption_train_*",), "val": ("conceptual_caption_val_*",),
                             "test": ("conceptual_caption_val_*",)}),
    _spec("sbu", "caption", {"train": ("sbu_*",), "val": (), "test": ()}),
    _spec("vg", "caption", {"train": ("vg",), "val": (), "test": ()}),
    _spec("vqa", "vqa", {"train": ("vqav2_train", "vqav2_trainable_val"), "val": ("vqav2_rest_val",),
                         "test": ("vqav2_test",)}, text_column="questions", remove_duplicate=False),
    _spec("nlvr2", "nlvr2", {"train": ("nlvr2_train",), "val": ("nlvr2_dev", "nlvr2_test1"),
                             "test": ("nlvr2_dev", "nlvr2_test1")}, text_column="questions", remove_duplicate=False),
    _spec("wikibk", "text", {"train": ("wikibk_train_*",), "val": ("wikibk_val_*",), "test": ("wikibk_val_*",)}),
    # Synthetic data (vlmo_fast.data.synthetic) in the same schemas.
    _spec("synthetic_caption", "caption", {"train": ("synthetic_caption_train",), "val": ("synthetic_caption_val",),
                                           "test": ("synthetic_caption_test",)}, train_transform="square_transform"),
    _spec("synthetic_vqa", "vqa", {"train": ("synthetic_vqa_train",), "val": ("synthetic_vqa_val",),
                                   "test": ("synthetic_vqa_val",)}, text_column="questions", remove_duplicate=False,
          train_transform="square_transform"),
    _spec("synthetic_nlvr2", "nlvr2", {"train": ("synthetic_nlvr2_train",), "val": ("synthetic_nlvr2_dev",),
                                       "test": ("synthetic_nlvr2_dev",)}, text_column="questions",
          remove_duplicate=False, train_transform="square_transform"),
    _spec("synthetic_text", "text", {"train": ("synthetic_text_train",), "val": ("synthetic_text_val",),
                                     "test": ("synthetic_text_val",)}),
]}

# Official pre-training mixture (config `datasets = ["coco", "vg", "sbu", "gcc"]`).
PRETRAIN_DATASETS = ("coco", "vg", "sbu", "gcc")


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def resolve_files(data_root: str | Path, name: str, split: str) -> list[Path]:
    """The arrow files of `split` of dataset `name` under `data_root`; raises FileNotFoundError naming a missing one."""
    spec = get_spec(name)
    if split not in spec.splits:
        raise UnknownNameError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(spec.splits)}")
    root = Path(data_root)
    files: list[Path] = []
    for stem in spec.splits[split]:
        if stem.endswith("_*"):
            files += _shards(root, stem[:-2], name, split)
            continue
        path = root / f"{stem}.arrow"
        if not path.is_file() and (root / f"{stem}{MANIFEST_SUFFIX}").is_file():
            path = root / f"{stem}{MANIFEST_SUFFIX}"  # the table as tar shards (shards.py)
        if not path.is_file():
            raise FileNotFoundError(f"dataset {name!r} split {split!r}: arrow file {path} not found "
                                    f"(nor shards {root / stem}{MANIFEST_SUFFIX})")
        files.append(path)
    return files


def table_stem(path: Path) -> str:
    """The table name of an arrow file or a shard manifest: `coco_caption_karpathy_val`."""
    name = Path(path).name
    return name[:-len(MANIFEST_SUFFIX)] if name.endswith(MANIFEST_SUFFIX) else Path(path).stem


def _shards(root: Path, prefix: str, name: str, split: str) -> list[Path]:
    suffix = ".arrow"
    found = sorted(root.glob(f"{prefix}_*.arrow"))
    if not found and sorted(root.glob(f"{prefix}_*{MANIFEST_SUFFIX}")):
        suffix = MANIFEST_SUFFIX
        found = sorted(root.glob(f"{prefix}_*{MANIFEST_SUFFIX}"))
    numbers = [table_stem(p)[len(prefix) + 1:] for p in found]
    indices = sorted(int(n) for n in numbers if n.isdigit())
    if not indices:
        raise FileNotFoundError(f"dataset {name!r} split {split!r}: no arrow file {root / prefix}_0.arrow "
                                f"(sharded as {prefix}_0.arrow, {prefix}_1.arrow, ...)")
    missing = sorted(set(range(indices[-1] + 1)) - set(indices))
    if missing:
        raise FileNotFoundError(f"dataset {name!r} split {split!r}: shard {root / prefix}_{missing[0]}.arrow "
                                f"missing between shards 0 and {indices[-1]}")
    return [root / f"{prefix}_{i}{suffix}" for i in indices]


def spec_of_table(table: str) -> DatasetSpec | None:
    """The dataset whose splits name this arrow table (`sbu_3` -> sbu), None if none does."""
    for spec in DATASETS.values():
        for stems in spec.splits.values():
            for stem in stems:
                if stem == table or (stem.endswith("_*") and table.startswith(stem[:-1])
                                     and table[len(stem) - 1:].isdigit()):
                    return spec
    return None
