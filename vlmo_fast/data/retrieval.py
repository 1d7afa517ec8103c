"""Retrieval evaluation data: every text of a split with the image it belongs to, and every image once.

The official evaluation runs a text loader over all captions (each with `img_index`, its row) and an image-only
loader over the rows; a caption of row i matches image i.  Example:
    r = retrieval_split("data/", "coco", "test", image_size=384)
    r.text_ids (N_t, 40), r.text_img_index (N_t,), r.images[i]["image"] (3, 384, 384), r.images[i]["img_index"] == i
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vlmo_fast.data.datasets import ArrowDataset, build_dataset
from vlmo_fast.data.tokenizer import get_tokenizer


@dataclass
class RetrievalData:
    """All texts of a split (padded ids, masks, real lengths, row of their image) and its image-only dataset."""

    texts: list[str]
    text_ids: torch.Tensor  # (N_t, Lt) int64
    text_masks: torch.Tensor  # (N_t, Lt) int64
    text_lens: torch.Tensor  # (N_t,) int64
    text_img_index: torch.Tensor  # (N_t,) int64: which image (row) each text belongs to
    images: ArrowDataset  # image-only: sample i is row i, with `image` (or `image_bytes`) and `img_index`

    @property
    def num_images(self) -> int:
        return len(self.images)


def retrieval_split(data_root: str | Path, name: str, split: str, *, image_size: int = 384, max_text_len: int = 40,
                    decode: str = "pil") -> RetrievalData:
    """Texts and images of `split` of a caption dataset for image-text retrieval evaluation."""
    images = build_dataset(data_root, name, split, image_size=image_size, max_text_len=max_text_len, train=False,
                           decode=decode, image_only=True)
    table = images.table
    texts = [t for row in table.texts for t in row]
    rows = torch.tensor([r for r, row in enumerate(table.texts) for _ in row], dtype=torch.long)
    enc = get_tokenizer().encode(texts, max_text_len)
    return RetrievalData(texts=texts, text_ids=enc.ids, text_masks=enc.masks, text_lens=enc.lens,
                         text_img_index=rows, images=images)
