"""The official named task configs (spec section 5) and step presets, the tiny CPU tasks, and `key=value`
overrides: `resolve("task_finetune_vqa_base_image480", ["per_gpu_batchsize=32", "load_path=x.pt"])`."""
from __future__ import annotations

import ast
import copy

from vlmo_fast.compat.config import OFFICIAL_DEFAULTS
from vlmo_fast.errors import UnknownNameError

# Keys vlmo-fast adds to the official config (the official keys keep their meaning).
FAST_DEFAULTS: dict = {
    "device": "auto",              # auto = cuda when available, else cpu
    "precision": "auto",           # auto = bf16 on CUDA, 32 on the CPU; also 16, bf16, 32
    "compile": "auto",             # torch.compile the step: auto = on CUDA only
    "decoder": "auto",             # image decoding: auto = DALI on CUDA when installed, else PIL
    "log_every": 10,               # optimizer steps between log lines
    "eval_batch_size": 64,
    "itm_rerank_k": 0,             # retrieval: re-rank the top-k of the ITC ranking with ITM (0 = off, official)
    "activation_checkpointing": False,
    "itc_gather_grad": True,       # all-gather contrastive features with gradient (exact); False = official
    "strategy": "ddp",             # several processes: ddp (replicated) or fsdp (FSDP2, parameters sharded)
    "resume": False,               # True: continue from log_dir/checkpoints; auto: if there is one (torchrun restarts)
    "trust_checkpoint": False,     # allow full unpickling of load_path (only for files from a trusted source)
    "max_train_steps": None,       # stop after this many optimizer steps (overrides the epoch count)
    "checkpoint_every": 0,         # optimizer steps between checkpoints (0 = at the end of every epoch)
    "verify_checkpoint": True,     # hash a checkpoint's files before loading it (False: compare sizes only)
    "checkpoint_on_error": "stop",  # a save that fails (disk full): stop the run, or retry at the next interval
    "nan_limit": 10,               # stop after this many skipped steps with a non-finite loss
    "eval_limit": 0,               # evaluate on at most this many samples (images for retrieval); 0 = all
    "data_format": "arrow",        # arrow (the official files) or wds (tar shards streamed: vlmo_fast/data/wds.py)
    "wds_shuffle_buffer": 1000,    # data_format=wds: samples each loader worker shuffles among
}
DEFAULTS = {**OFFICIAL_DEFAULTS, **FAST_DEFAULTS}

_PRE = dict(datasets=["coco", "vg", "sbu", "gcc"], train_transform_keys=["square_transform_randaug"],
            val_transform_keys=["square_transform"], batch_size=1024, max_epoch=100, max_steps=200000,
            warmup_steps=0.1, whole_word_masking=True)
_FT = dict(train_transform_keys=["square_transform_randaug"], val_transform_keys=["square_transform"])


def _losses(**on) -> dict:
    return {k: on.get(k, 0) for k in ("itm", "itc", "mlm", "textmlm", "vqa", "nlvr2", "irtr")}


def _task(base: dict, **kw) -> dict:
    return {**base, **kw}


TASKS: dict[str, dict] = {
    "task_textmlm_base": _task(_PRE, exp_name="textmlm_base", datasets=["wikibk"], loss_names=_losses(textmlm=1),
                               max_text_len=196, learning_rate=2e-4, model_arch="vlmo_base_patch16"),
    "task_textmlm_base_plus": _task(_PRE, exp_name="textmlm_base_plus", datasets=["wikibk"],
                                    loss_names=_losses(textmlm=1), max_text_len=196, learning_rate=2e-4,
                                    model_arch="vlmo_base_plus_patch16"),
    "task_mlm_itm_itc_base": _task(_PRE, exp_name="mlm_itm_itc_base", loss_names=_losses(itm=1, itc=1, mlm=1),
                                   learning_rate=2e-4, model_arch="vlmo_base_patch16"),
    "task_mlm_itm_itc_base_plus": _task(_PRE, exp_name="mlm_itm_itc_base_plus",
                                        loss_names=_losses(itm=1, itc=1, mlm=1), learning_rate=1e-4,
                                        model_arch="vlmo_base_plus_patch16"),
    # The official config names "vit_large_patch16_224" here (a timm ViT that cannot build); fixed.
    "task_mlm_itm_itc_large": _task(_PRE, exp_name="mlm_itm_itc_large", loss_names=_losses(itm=1, itc=1, mlm=1),
                                    learning_rate=5e-5, model_arch="vlmo_large_patch16"),
}


def _finetune(name: str, arch: str, datasets: list, losses: dict, image: int, lr: float, drop: float,
              batch: int = 128, max_steps=None, max_epoch: int = 10, warmup=0.1, lr_mult: float = 1,
              recall: bool = False) -> None:
    TASKS[name] = _task(_FT, exp_name=name.removeprefix("task_"), model_arch=arch, datasets=datasets,
                        loss_names=losses, image_size=image, learning_rate=lr, drop_path_rate=drop,
                        batch_size=batch, max_steps=max_steps, max_epoch=max_epoch, warmup_steps=warmup,
                        lr_mult=lr_mult, get_recall_metric=recall, whole_word_masking=False)


_B, _BP, _L = "vlmo_base_patch16", "vlmo_base_plus_patch16", "vlmo_large_patch16"
for _n, _a, _img, _lr, _dp in [("base", _B, 224, 5e-5, 0.1), ("base_plus", _BP, 224, 3e-5, 0.2),
                               ("base_image384", _B, 384, 5e-5, 0.1), ("base_plus_image384", _BP, 384, 3e-5, 0.2),
                               ("large", _L, 224, 3e-5, 0.15), ("large_image384", _L, 384, 3e-5, 0.15)]:
    _finetune(f"task_finetune_nlvr2_{_n}", _a, ["nlvr2"], _losses(nlvr2=1), _img, _lr, _dp)
for _n, _a, _lr in [("base", _B, 3e-5), ("base_plus", _BP, 3e-5), ("large", _L, 1.5e-5)]:
    _finetune(f"task_finetune_vqa_{_n}_image480", _a, ["vqa"], _losses(vqa=1), 480, _lr, 0.15, lr_mult=20)
for _n, _a, _img, _lr, _dp in [("base", _B, 224, 3e-5, 0.15), ("base_image384", _B, 384, 3e-5, 0.15),
                               ("base_plus_image384", _BP, 384, 3e-5, 0.2), ("large_image384", _L, 384, 2e-5, 0.2)]:
    _finetune(f"task_finetune_irtr_f30k_{_n}", _a, ["f30k"], _losses(irtr=1), _img, _lr, _dp, batch=3072,
              max_steps=1500, max_epoch=50, warmup=150, recall=True)
for _n, _a, _lr in [("base_image384", _B, 3e-5), ("base_plus_image384", _BP, 3e-5), ("large_image384", _L, 2e-5)]:
    _finetune(f"task_finetune_irtr_coco_{_n}", _a, ["coco"], _losses(irtr=1), 384, _lr, 0.2, batch=3072,
              max_steps=3000, max_epoch=50, warmup=300, recall=True)

# Tiny tasks: a small model trained from scratch on the synthetic data (`vlmo-fast convert synthetic DIR`) on a CPU
# in minutes, then evaluated.  Named like the official families.
_TINY = dict(model_arch="vlmo_tiny_patch16", image_size=64, max_text_len=24, drop_path_rate=0.0,
             train_transform_keys=["square_transform"], val_transform_keys=["square_transform"],
             per_gpu_batchsize=32, batch_size=32, max_steps=None, warmup_steps=0.1, learning_rate=5e-4,
             eval_batch_size=128, num_workers=0, whole_word_masking=False)
TASKS.update({
    "task_textmlm_tiny": _task(_TINY, exp_name="textmlm_tiny", datasets=["synthetic_text"],
                               loss_names=_losses(textmlm=1), max_epoch=2),
    "task_mlm_itm_itc_tiny": _task(_TINY, exp_name="mlm_itm_itc_tiny", datasets=["synthetic_caption"],
                                   loss_names=_losses(itm=1, itc=1, mlm=1), max_epoch=3, get_recall_metric=True),
    "task_finetune_vqa_tiny": _task(_TINY, exp_name="finetune_vqa_tiny", datasets=["synthetic_vqa"],
                                    loss_names=_losses(vqa=1), max_epoch=2, learning_rate=3e-4, lr_mult=10),
    "task_finetune_nlvr2_tiny": _task(_TINY, exp_name="finetune_nlvr2_tiny", datasets=["synthetic_nlvr2"],
                                      loss_names=_losses(nlvr2=1), max_epoch=4, learning_rate=3e-4),
    "task_finetune_irtr_tiny": _task(_TINY, exp_name="finetune_irtr_tiny", datasets=["synthetic_caption"],
                                     loss_names=_losses(irtr=1), max_epoch=2, get_recall_metric=True),
})

# Schedule add-ons of the official config (applied after a task).
STEP_PRESETS: dict[str, dict] = {
    "step1_5k": dict(max_epoch=100, warmup_steps=150, max_steps=1500),
    "step3k": dict(max_epoch=100, warmup_steps=300, max_steps=3000),
    "step200k": dict(max_epoch=200, warmup_steps=2500, max_steps=200000),
    "step500k": dict(max_epoch=500, warmup_steps=2500, max_steps=500000),
}


def _parse_value(text: str, current):
    """A `key=value` value: Python literal syntax where it parses (numbers, lists, dicts, True/None), else a
    string; a comma list for list-valued keys (`datasets=coco,f30k`)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, list) and isinstance(value, str):
        value = [v for v in value.split(",") if v]
    return value


def resolve(task: str | None, args: list[str] = ()) -> dict:
    """The full config of a named task, then step presets and key=value overrides in order.

    Arguments are either preset names (another task_* or step*) or key=value with an official or vlmo-fast key;
    `loss_names.itm=1` sets one entry of a dict key.  Unknown names and keys are errors naming them.
    """
    config = copy.deepcopy(DEFAULTS)
    items = ([task] if task else []) + list(args)
    for item in items:
        if "=" not in item:
            if item in TASKS:
                config.update(copy.deepcopy(TASKS[item]))
            elif item in STEP_PRESETS:
                config.update(STEP_PRESETS[item])
            else:
                raise UnknownNameError(f"unknown task or preset {item!r}; tasks: {', '.join(TASKS)}; "
                               f"presets: {', '.join(STEP_PRESETS)}")
            continue
        key, _, text = item.partition("=")
        head, _, sub = key.partition(".")
        if head not in config:
            raise UnknownNameError(f"unknown config key {head!r} in {item!r}")
        if sub:
            if not isinstance(config[head], dict):
                raise UnknownNameError(f"{head!r} is not a dict key ({item!r})")
            config[head] = {**config[head], sub: _parse_value(text, None)}
        else:
            config[head] = _parse_value(text, config[head])
    return config


def official_part(config: dict) -> dict:
    """The official keys of a resolved config (what vlmo_fast.compat accepts)."""
    return {k: v for k, v in config.items() if k in OFFICIAL_DEFAULTS}
