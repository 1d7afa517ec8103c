"""Collate samples (datasets.py) into the official batch dict (spec 2 and 6.3).

Batch dict (B samples, Lt = max_text_len; every text is padded to exactly Lt, as the official code requires):
- `text` list[str]; `text_ids`, `text_masks` (1 real / 0 pad), `text_labels` (all -100), `text_ids_mlm`,
  `text_labels_mlm` (original id where corrupted, else -100): LongTensor (B, Lt); `text_lens` LongTensor (B,) real
  lengths including [CLS]/[SEP] (new: lets the packed model drop padding without scanning the masks).
- `image`: [FloatTensor (B, 3, S, S)] in [-1, 1] (a list, as officially); NLVR2: `image_0`, `image_1` likewise.
  Samples left encoded for DALI give `image_bytes` (`image_0_bytes`, `image_1_bytes`) lists instead.
- VQA: `vqa_answer` list[list[str]], `vqa_labels` list[list[int]], `vqa_scores` list[list[float]], `qid` list[int]
  (dense targets are the model's job).  NLVR2: `answers` list[int] (1 = "True").
- `table_name` list[str]; `img_index` LongTensor (B,) (the row, i.e. which image a caption belongs to, for
  retrieval evaluation), `cap_index` LongTensor (B,) (-1 for image-only samples), `raw_index` LongTensor (B,).
With a `planner` (a compiled training step's: vlmo_fast/train/layouts.py) the batch also carries what it returns:
the packed layouts of the step's passes, planned here, in the loader's workers.
MLM corruption is always computed (as officially) from a torch.Generator seeded by the samples' seeds, so a batch
is a pure function of (seed, epoch, sample indices) whatever the worker that builds it.
"""
from __future__ import annotations

from typing import Callable

import torch

from vlmo_fast.data.mlm import IGNORE_INDEX, MLMCollator
from vlmo_fast.data.tokenizer import get_tokenizer, pad_ids
from vlmo_fast.seeds import batch_seed

_INDEX_KEYS = ("img_index", "cap_index", "raw_index")
_LIST_KEYS = ("vqa_answer", "vqa_labels", "vqa_scores", "qid", "answers", "table_name")


def batch_generator(seeds: list[int]) -> torch.Generator:
    """A generator seeded by mixing every sample seed of the batch."""
    return torch.Generator().manual_seed(batch_seed(seeds))


class Collator:
    """Callable: list of sample dicts -> batch dict (module docstring).

    Example: DataLoader(ds, batch_size=32, collate_fn=Collator(max_text_len=40, whole_word=True))
    """

    def __init__(self, *, max_text_len: int = 40, whole_word: bool = False, mlm_prob: float = 0.15,
                 planner: Callable[[dict], dict] | None = None):
        self.max_text_len = max_text_len
        self.planner = planner
        self.mlm = MLMCollator(whole_word=whole_word, is_continuation=get_tokenizer().is_continuation,
                               prob=mlm_prob)

    def __call__(self, samples: list[dict]) -> dict:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        batch: dict = {}
        keys = set().union(*samples)
        if "text_ids" in keys:
            enc = pad_ids([s["text_ids"] for s in samples], self.max_text_len)
            ids_mlm, labels_mlm = self.mlm(enc.ids, batch_generator([s["sample_seed"] for s in samples]))
            batch.update(text=[s["text"] for s in samples], text_ids=enc.ids, text_masks=enc.masks,
                         text_labels=torch.full_like(enc.ids, IGNORE_INDEX), text_ids_mlm=ids_mlm,
                         text_labels_mlm=labels_mlm, text_lens=enc.lens)
        for key in sorted(keys):
            if key.startswith("image") and key.endswith("_bytes"):
                batch[key] = [s[key] for s in samples]
            elif key.startswith("image"):
                batch[key] = [torch.stack([s[key] for s in samples])]
        for key in _INDEX_KEYS:
            if key in keys:
                batch[key] = torch.tensor([s[key] for s in samples], dtype=torch.long)
        for key in _LIST_KEYS:
            if key in keys:
                batch[key] = [s.get(key) for s in samples]
        if self.planner is not None:
            batch.update(self.planner(batch))
        return batch


def text_lens(batch: dict) -> torch.Tensor:
    """A batch's real caption lengths: the collate's `text_lens`, else the sum of the (prefix) masks."""
    lens = batch.get("text_lens")
    return (batch["text_masks"].sum(1) if lens is None else lens).to(torch.int32)
