"""Data loaders of a training run: the task's datasets, the official collate, seeded order per epoch."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from vlmo_fast.data.collate import Collator
from vlmo_fast.data.dali import DaliDecoder
from vlmo_fast.data.datasets import TextOnlyView, build_dataset, set_epoch
from vlmo_fast.data.registry import get_spec
from vlmo_fast.data.wds import WdsSplit
from vlmo_fast.seeds import epoch_order_seed, loader_seed
from vlmo_fast.run_config import RunConfig
from .layouts import LayoutPlanner, StepLayouts

# Answer vocabularies written beside the VQA arrow files by the converters (label -> answer).
ANSWER_FILES = {"vqa": "vqav2_answers.json", "synthetic_vqa": "synthetic_vqa_answers.json"}


def answer_vocabulary(config: RunConfig) -> list[str] | None:
    """The VQA answers (label -> string) of the task's VQA dataset, None if the task has none."""
    for name in config.data.datasets:
        if name in ANSWER_FILES:
            path = Path(config.data.data_root) / ANSWER_FILES[name]
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: write the VQA arrow files with `vlmo-fast convert`")
            return json.loads(path.read_text())
    return None


def build_split(config: RunConfig, split: str, train: bool, image_only: bool = False,
                decode: str = "pil") -> Dataset | WdsSplit:
    """The concatenation of the task's datasets for a split (text-only tasks read only the captions).
    decode="dali" leaves the images encoded for the batch-wise DALI decoder.  With data_format=wds the training
    split streams from tar shards (a WdsSplit; evaluation splits are read whole, see arrow.py)."""
    text_only = "textmlm" in config.objectives.enabled
    if config.data.data_format == "wds" and train and not image_only:
        return WdsSplit(config, split, train=train, decode=decode, text_only=text_only)
    parts = []
    for name in config.data.datasets:
        if not get_spec(name).splits.get(split):
            continue
        ds = build_dataset(config.data.data_root, name, split, image_size=config.model.image_size,
                           max_text_len=config.model.max_text_len, train=train, image_only=image_only,
                           seed=config.runtime.seed, decode=decode)
        parts.append(TextOnlyView(ds) if text_only and get_spec(name).kind != "text" else ds)
    if not parts:
        raise ValueError(f"none of the datasets {config.data.datasets} has a {split!r} split")
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def augments(config: RunConfig) -> bool:
    """Whether the task's training images get the official crop/flip/RandomAugment (the synthetic data does not:
    positions and left/right are part of its captions)."""
    return any(get_spec(n).train_transform != "square_transform" for n in config.data.datasets)


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's sample order for an epoch: a seeded permutation, dealt round-robin over ranks (each rank the
    same number of samples, the tail dropped as a DistributedSampler with drop_last would)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_order_seed(seed, epoch))).tolist()
    per_rank = n // world
    return perm[rank:per_rank * world:world]


def epoch_loader(dataset: Dataset | WdsSplit, config: RunConfig, batch_size: int, accumulate: int, epoch: int,
                 start_batch: int, rank: int, world: int, device: torch.device, dali: DaliDecoder | None = None,
                 planner: LayoutPlanner | None = None):
    """This rank's batches of an epoch from batch `start_batch` on (a resume), whole steps only: the same number
    on every rank.  With a DALI decoder, the images of the next batches are decoded while a batch trains.  With a
    planner the collate plans each batch's layouts (the compiled step's)."""
    workers = config.data.num_workers
    if isinstance(dataset, WdsSplit):
        dataset.collate.planner = planner
        data = dataset.loader(epoch=epoch, rank=rank, world=world, batch_size=batch_size,
                              unit=batch_size * accumulate, workers=workers, start_batch=start_batch,
                              pin_memory=device.type == "cuda")
    else:
        order = epoch_order(len(dataset), config.runtime.seed, epoch, rank, world)
        usable = (len(order) // (batch_size * accumulate)) * batch_size * accumulate
        data = loader(dataset, order[start_batch * batch_size:usable], config, batch_size, epoch, True, device,
                      planner)
    return data if dali is None else dali.decode_ahead(data)


def loader(dataset: Dataset, indices: list[int], config: RunConfig, batch_size: int, epoch: int, drop_last: bool,
           device: torch.device, planner: LayoutPlanner | None = None) -> DataLoader:
    """A DataLoader over `indices` in that order (resume skips the consumed prefix by slicing them)."""
    set_epoch(dataset, epoch)
    collate = Collator(max_text_len=config.model.max_text_len, whole_word=config.data.whole_word_masking,
                       mlm_prob=config.data.mlm_prob, planner=planner)
    workers = config.data.num_workers
    # Its own generator: creating the iterator must not draw from the global RNG, or a resumed run (which creates
    # one more iterator) would see another drop-path stream than the uninterrupted one.
    generator = torch.Generator().manual_seed(loader_seed(config.runtime.seed, epoch))
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, collate_fn=collate, drop_last=drop_last,
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False,
                      prefetch_factor=4 if workers else None, generator=generator)


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors (and lists of tensors, the official image lists, and the planned layouts) moved to the device (from
    pinned memory asynchronously); the rest kept."""
    def move(v):
        if isinstance(v, (torch.Tensor, StepLayouts)):
            return v.to(device, non_blocking=True)
        if isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            return [t.to(device, non_blocking=True) for t in v]
        return v
    return {k: move(v) for k, v in batch.items()}
