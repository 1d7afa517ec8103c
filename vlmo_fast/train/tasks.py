"""Named run configs: the official tasks (spec section 5), the tiny CPU tasks, the official step presets, and
`key=value` overrides, resolved into a checked RunConfig:

    resolve("task_finetune_vqa_base_image480", ["step200k", "per_gpu_batchsize=32", "load_path=x.pt"])

A task is a family base (pre-training, fine-tuning, tiny) with its own keys over it, all under the official key
names; `vlmo-fast tasks` lists them.
"""
from __future__ import annotations

from vlmo_fast.config import OBJECTIVES
from vlmo_fast.errors import UnknownNameError
from vlmo_fast.run_config import SECTION_OF, RunConfig, parse_override

BASE, BASE_PLUS, LARGE, TINY = "vlmo_base_patch16", "vlmo_base_plus_patch16", "vlmo_large_patch16", "vlmo_tiny_patch16"

PRETRAIN = dict(datasets=["coco", "vg", "sbu", "gcc"], train_transform_keys=["square_transform_randaug"],
                val_transform_keys=["square_transform"], batch_size=1024, max_epoch=100, max_steps=200000,
                warmup_steps=0.1, whole_word_masking=True)
FINETUNE = dict(train_transform_keys=["square_transform_randaug"], val_transform_keys=["square_transform"],
                batch_size=128, max_steps=None, max_epoch=10, warmup_steps=0.1, lr_mult=1, get_recall_metric=False,
                whole_word_masking=False)
# A small model trained from scratch on the synthetic data (`vlmo-fast convert synthetic DIR`) on a CPU in minutes.
# fp32: at width 96 bf16 autocast gains little on the CPU and lowered the demo's retrieval (README, "Measured")
TINY_RUN = dict(model_arch=TINY, image_size=64, max_text_len=24, drop_path_rate=0.0,
                train_transform_keys=["square_transform"], val_transform_keys=["square_transform"],
                per_gpu_batchsize=32, batch_size=32, max_steps=None, warmup_steps=0.1, learning_rate=5e-4,
                eval_batch_size=128, num_workers=0, whole_word_masking=False, precision=32)

# name -> official keys over the defaults (the family base first)
TASKS: dict[str, dict] = {}


def losses(*names: str) -> dict[str, int]:
    """loss_names with weight 1 for `names`, 0 for every other objective."""
    return {name: int(name in names) for name in OBJECTIVES}


def register(name: str, base: dict, **keys) -> None:
    """Task `name`: `base` with `keys` over it; its exp_name is the name without "task_"."""
    TASKS[name] = {**base, "exp_name": name.removeprefix("task_"), **keys}


for _size, _arch in (("base", BASE), ("base_plus", BASE_PLUS)):
    register(f"task_textmlm_{_size}", PRETRAIN, datasets=["wikibk"], loss_names=losses("textmlm"),
             max_text_len=196, learning_rate=2e-4, model_arch=_arch)
for _size, _arch, _lr in (("base", BASE, 2e-4), ("base_plus", BASE_PLUS, 1e-4), ("large", LARGE, 5e-5)):
    # (the official large task names "vit_large_patch16_224", a timm ViT that cannot build; fixed)
    register(f"task_mlm_itm_itc_{_size}", PRETRAIN, loss_names=losses("itm", "itc", "mlm"), learning_rate=_lr,
             model_arch=_arch)

for _size, _arch, _image, _lr, _drop in (("base", BASE, 224, 5e-5, 0.1), ("base_plus", BASE_PLUS, 224, 3e-5, 0.2),
                                         ("base_image384", BASE, 384, 5e-5, 0.1),
                                         ("base_plus_image384", BASE_PLUS, 384, 3e-5, 0.2),
                                         ("large", LARGE, 224, 3e-5, 0.15), ("large_image384", LARGE, 384, 3e-5, 0.15)):
    register(f"task_finetune_nlvr2_{_size}", FINETUNE, model_arch=_arch, datasets=["nlvr2"], loss_names=losses("nlvr2"),
             image_size=_image, learning_rate=_lr, drop_path_rate=_drop)
for _size, _arch, _lr in (("base", BASE, 3e-5), ("base_plus", BASE_PLUS, 3e-5), ("large", LARGE, 1.5e-5)):
    register(f"task_finetune_vqa_{_size}_image480", FINETUNE, model_arch=_arch, datasets=["vqa"],
             loss_names=losses("vqa"), image_size=480, learning_rate=_lr, drop_path_rate=0.15, lr_mult=20)
RETRIEVAL = dict(FINETUNE, loss_names=losses("irtr"), batch_size=3072, max_epoch=50, get_recall_metric=True)
for _size, _arch, _image, _lr, _drop in (("base", BASE, 224, 3e-5, 0.15), ("base_image384", BASE, 384, 3e-5, 0.15),
                                         ("base_plus_image384", BASE_PLUS, 384, 3e-5, 0.2),
                                         ("large_image384", LARGE, 384, 2e-5, 0.2)):
    register(f"task_finetune_irtr_f30k_{_size}", RETRIEVAL, model_arch=_arch, datasets=["f30k"], image_size=_image,
             learning_rate=_lr, drop_path_rate=_drop, max_steps=1500, warmup_steps=150)
for _size, _arch, _lr in (("base_image384", BASE, 3e-5), ("base_plus_image384", BASE_PLUS, 3e-5),
                          ("large_image384", LARGE, 2e-5)):
    register(f"task_finetune_irtr_coco_{_size}", RETRIEVAL, model_arch=_arch, datasets=["coco"], image_size=384,
             learning_rate=_lr, drop_path_rate=0.2, max_steps=3000, warmup_steps=300)

register("task_textmlm_tiny", TINY_RUN, datasets=["synthetic_text"], loss_names=losses("textmlm"), max_epoch=2)
register("task_mlm_itm_itc_tiny", TINY_RUN, datasets=["synthetic_caption"], loss_names=losses("itm", "itc", "mlm"),
         max_epoch=3, get_recall_metric=True)
register("task_finetune_vqa_tiny", TINY_RUN, datasets=["synthetic_vqa"], loss_names=losses("vqa"), max_epoch=2,
         learning_rate=3e-4, lr_mult=10)
register("task_finetune_nlvr2_tiny", TINY_RUN, datasets=["synthetic_nlvr2"], loss_names=losses("nlvr2"),
         max_epoch=4, learning_rate=3e-4)
register("task_finetune_irtr_tiny", TINY_RUN, datasets=["synthetic_caption"], loss_names=losses("irtr"),
         max_epoch=2, get_recall_metric=True)

# Schedule presets of the official config, applied after a task.
STEP_PRESETS: dict[str, dict] = {
    "step1_5k": dict(max_epoch=100, warmup_steps=150, max_steps=1500),
    "step3k": dict(max_epoch=100, warmup_steps=300, max_steps=3000),
    "step200k": dict(max_epoch=200, warmup_steps=2500, max_steps=200000),
    "step500k": dict(max_epoch=500, warmup_steps=2500, max_steps=500000),
}


def resolve(task: str | None, args: list[str] = ()) -> RunConfig:
    """The checked config of a named task, then presets (another task_* or step*) and `key=value` overrides in
    order; `loss_names.itm=1` sets one entry of a dict key.  Unknown names and keys, and bad values, are errors
    naming them."""
    keys = RunConfig().to_dict()
    for item in ([task] if task else []) + list(args):
        if "=" in item:
            _override(keys, item)
        elif item in TASKS:
            keys.update(TASKS[item])
        elif item in STEP_PRESETS:
            keys.update(STEP_PRESETS[item])
        else:
            raise UnknownNameError(f"unknown task or preset {item!r}; tasks: {', '.join(TASKS)}; "
                                   f"presets: {', '.join(STEP_PRESETS)}")
    return RunConfig.from_official(keys)


def _override(keys: dict, item: str) -> None:
    name, _, text = item.partition("=")
    head, _, entry = name.partition(".")
    if head not in SECTION_OF:
        raise UnknownNameError(f"unknown config key {head!r} in {item!r}")
    if entry and not isinstance(keys[head], dict):
        raise UnknownNameError(f"{head!r} is not a dict key ({item!r})")
    value = parse_override(name, text)
    keys[head] = {**keys[head], entry: value} if entry else value


def describe(name: str) -> str:
    """One line on a task or preset: what it trains, on what, how (for `vlmo-fast tasks`)."""
    if name in STEP_PRESETS:
        return "preset  " + " ".join(f"{k}={v}" for k, v in STEP_PRESETS[name].items())
    c = resolve(name)
    return (f"task    {'+'.join(c.objectives.enabled)} on {','.join(c.data.datasets)}; {c.model.model_arch} "
            f"{c.model.image_size}px; lr {c.optim.learning_rate:g}, batch {c.optim.batch_size}, "
            + (f"{c.schedule.max_steps} steps" if c.schedule.max_steps else f"{c.schedule.max_epoch} epochs"))
