"""Map-style torch Datasets over the ViLT arrow files: caption, VQA, NLVR2 and text-only samples.

A sample is a dict (collate.py turns a list of them into the official batch dict):
- every kind: `text` (str), `text_ids` (list[int], `[CLS] ... [SEP]`, at most max_text_len), `raw_index` (the
  sample index), `img_index` (row of the split), `cap_index` (text within the row; -1 image-only),
  `table_name` (arrow file stem), `sample_seed` (int: seeds this sample's augmentation and, mixed over a batch,
  the MLM corruption).
- caption / vqa: `image` (tensor (3, S, S)) when decoding with PIL, or `image_bytes` (encoded bytes) when the
  images are decoded later in a batch (DALI, dali.py).
- vqa: `vqa_answer` (list[str]), `vqa_labels` (list[int]), `vqa_scores` (list[float]), `qid` (int).
- nlvr2: `image_0`, `image_1` (or `image_0_bytes`, `image_1_bytes`) and `answers` (1 for "True", else 0).
An image that fails to decode is logged with its key, counted in `bad_images`, and the sample is replaced by the
next one (the official code retries a random index; ours is deterministic).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from vlmo_fast.data.arrow import SplitTable
from vlmo_fast.data.images import BadImage, decode_rgb
from vlmo_fast.data.registry import PRETRAIN_DATASETS, get_spec
from vlmo_fast.data.tokenizer import BertTokenizer, get_tokenizer
from vlmo_fast.data.transforms import ImageTransform, get_transform
from vlmo_fast.seeds import sample_seed

log = logging.getLogger(__name__)




class ArrowDataset(Dataset):
    """One split of one dataset (registry.py), giving samples of its kind (module docstring).

    Example: ArrowDataset("data/", "coco", "train", transform=square_transform_randaug(224))[0]["image"].shape
    -> (3, 224, 224).  transform=None returns the encoded image bytes instead (for batch decoding with DALI).
    """

    def __init__(self, data_root: str | Path, name: str, split: str, *, transform: ImageTransform | None = None,
                 max_text_len: int = 40, image_only: bool = False, seed: int = 0,
                 tokenizer: BertTokenizer | None = None):
        self.kind = get_spec(name).kind
        self.table = SplitTable(data_root, name, split, image_only=image_only)
        self.name, self.split = name, split
        self.transform = transform
        self.max_text_len = max_text_len
        self.image_only = image_only
        self.seed, self.epoch = seed, 0
        self.tokenizer = tokenizer or get_tokenizer()
        self.bad_images = 0  # per process: each DataLoader worker counts its own (the log names every one)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation and masking streams (call before creating each epoch's iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.name}/{self.split}: index {index} out of range for {n} samples")
        index %= n
        for k in range(n):
            try:
                return self._sample((index + k) % n)
            except BadImage as e:
                self.bad_images += 1
                log.warning("%s/%s: skipping sample %d: %s", self.name, self.split, (index + k) % n, e)
        raise RuntimeError(f"{self.name}/{self.split}: no sample has a decodable image")

    def _sample(self, index: int) -> dict:
        row, cap = int(self.table.rows[index]), int(self.table.caps[index])
        return build_sample(self.table, self.kind, index, row, cap, seed=sample_seed(self.seed, self.epoch, index),
                            transform=self.transform, tokenizer=self.tokenizer, max_text_len=self.max_text_len)


def _image(table, column: str, row: int, rng: np.random.Generator, out: dict, key: str,
           transform: ImageTransform | None) -> None:
    data = table.value(column, row)
    where = f"{table.row_key(row)} column {column}"
    if transform is None:
        decode_rgb(data, where)  # validates even when a later batch decoder does the real work
        out[f"{key}_bytes"] = data
    else:
        out[key] = transform(decode_rgb(data, where), rng)


def _list_at(table, column: str, row: int, cap: int) -> list:
    # The test split has no answers: the official writer stores empty lists there.
    values = table.value(column, row) or []
    return list(values[cap]) if cap < len(values) else []


def build_sample(table, kind: str, index: int, row: int, cap: int, *, seed: int, transform: ImageTransform | None,
                 tokenizer: BertTokenizer, max_text_len: int) -> dict:
    """Sample `index` (text `cap` of row `row`, -1 image-only) of a table: anything with `texts`, `table_names`,
    `value(column, row)` and `row_key(row)` (a SplitTable, or the rows of a tar shard).  kind "text" gives the
    text fields only.  Raises BadImage naming the row when an image does not decode."""
    rng = np.random.default_rng(seed)
    out: dict = {"raw_index": index, "img_index": row, "cap_index": cap,
                 "table_name": str(table.table_names[row]), "sample_seed": seed}
    text = table.texts[row][cap] if cap >= 0 else ""
    if cap >= 0 or kind == "text":
        out["text"] = text
        out["text_ids"] = tokenizer.encode_ids([text], max_text_len)[0]
    if kind in ("caption", "vqa"):
        _image(table, "image", row, rng, out, "image", transform)
    elif kind == "nlvr2":
        _image(table, "image_0", row, rng, out, "image_0", transform)
        _image(table, "image_1", row, rng, out, "image_1", transform)
        if cap >= 0:
            out["answers"] = int(table.value("answers", row)[cap] == "True")
    if kind == "vqa" and cap >= 0:
        out["vqa_answer"] = _list_at(table, "answers", row, cap)
        out["vqa_labels"] = _list_at(table, "answer_labels", row, cap)
        out["vqa_scores"] = _list_at(table, "answer_scores", row, cap)
        out["qid"] = table.value("question_id", row)[cap]
    return out


class TextOnlyView(Dataset):
    """The texts of a dataset without images (text-only MLM on captions, retrieval text side)."""

    def __init__(self, dataset: ArrowDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        ds = self.dataset
        row, cap = int(ds.table.rows[index]), int(ds.table.caps[index])
        text = ds.table.texts[row][cap]
        return {"text": text, "text_ids": ds.tokenizer.encode_ids([text], ds.max_text_len)[0],
                "raw_index": index, "img_index": row, "cap_index": cap,
                "table_name": str(ds.table.table_names[row]), "sample_seed": sample_seed(ds.seed, ds.epoch, index)}


def build_dataset(data_root: str | Path, name: str, split: str, *, image_size: int = 224, max_text_len: int = 40,
                  train: bool | None = None, decode: str = "pil", image_only: bool = False, seed: int = 0,
                  transform: str | None = None) -> ArrowDataset:
    """The dataset of the official configs: train split with the dataset's training transform
    (`square_transform_randaug`; `square_transform` for synthetic data), others with `square_transform`
    (override with `transform`).  decode="dali" leaves images encoded for dali.py.

    Example: build_dataset("data/", "vqa", "train", image_size=480)
    """
    train = (split == "train") if train is None else train
    if decode not in ("pil", "dali"):
        raise ValueError(f"decode must be 'pil' or 'dali', got {decode!r}")
    spec, tf = get_spec(name), None
    if decode == "pil" and spec.kind != "text":
        tf = get_transform(transform or (spec.train_transform if train else "square_transform"), image_size)
    return ArrowDataset(data_root, name, split, transform=tf, max_text_len=max_text_len, image_only=image_only,
                        seed=seed)


def pretrain_dataset(data_root: str | Path, split: str = "train", names: tuple[str, ...] = PRETRAIN_DATASETS,
                     **kwargs) -> ConcatDataset:
    """The pre-training mixture (COCO, VG, SBU, GCC by default) as one dataset; splits a dataset lacks are empty.

    Example: pretrain_dataset("data/", "train", names=("coco", "vg"), image_size=224)
    """
    parts = [build_dataset(data_root, n, split, **kwargs) for n in names if get_spec(n).splits.get(split)]
    if not parts:
        raise ValueError(f"no dataset among {', '.join(names)} has a {split!r} split")
    return ConcatDataset(parts)


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """set_epoch on an ArrowDataset, a TextOnlyView or every part of a ConcatDataset."""
    if isinstance(dataset, ConcatDataset):
        for d in dataset.datasets:
            set_epoch(d, epoch)
    elif isinstance(dataset, TextOnlyView):
        dataset.dataset.set_epoch(epoch)
    elif hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)

