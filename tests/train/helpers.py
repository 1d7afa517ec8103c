"""Helpers of the compiled-step tests (test_layouts.py, test_compiled_step.py): a tiny model and a batch with what
each task reads."""
from __future__ import annotations

import torch

from vlmo_fast.bench import synthetic_batch
from vlmo_fast.config import ModelConfig
from vlmo_fast.model.vlmo import VLMo

PRETRAIN = frozenset({"itc", "itm", "mlm"})


def tiny_model(tasks, seed: int = 0) -> VLMo:
    torch.manual_seed(seed)
    cfg = ModelConfig(embed_dim=32, depth=2, num_heads=2, vl_start=1, image_size=32, max_text_len=20,
                      vocab_size=1200, drop_path_rate=0.0, tasks=tuple(sorted(tasks)), vqa_label_size=7)
    return VLMo(cfg).train()


def task_batch(cfg: ModelConfig, tasks, B: int = 5, seed: int = 3) -> dict:
    """A batch of B pairs with what each task reads (VQA answers, NLVR2's second image and labels)."""
    batch = synthetic_batch(cfg, B, 20, seed, "cpu")
    batch["text_lens"] = batch["text_lens"] - torch.arange(B)  # shorter captions: padding to plan
    batch["text_ids"] = batch["text_ids"] * (torch.arange(20) < batch["text_lens"][:, None])
    batch["text_labels_mlm"] = batch["text_labels_mlm"].masked_fill(torch.arange(20) >= batch["text_lens"][:, None],
                                                                    -100)
    if "vqa" in tasks:
        batch["vqa_labels"] = [[i % 7, (i + 2) % 7] for i in range(B)]
        batch["vqa_scores"] = [[1.0, 0.3] for _ in range(B)]
    if "nlvr2" in tasks:
        batch["image_0"], batch["image_1"] = batch["image"], [batch["image"][0].flip(0)]
        batch["answers"] = [i % 2 for i in range(B)]
    return batch
