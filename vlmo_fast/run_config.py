"""The run config: typed sections (model, objectives, data, optim, schedule, evaluation, runtime, checkpoint) whose
fields carry the official key names (`per_gpu_batchsize`, `learning_rate`, ...), checked when built.

    config = RunConfig.from_official({"per_gpu_batchsize": 32, "learning_rate": 3e-5})
    config.optim.per_gpu_batchsize            # 32
    config.to_dict()["learning_rate"]         # 3e-05: every key back under its official name
    RunConfig.from_official({"per_gpu_batchsize": -3})   # ValueError: per_gpu_batchsize=-3: must be >= 1

The defaults are the official config.py's (spec section 5) plus the keys vlmo-fast adds (official=False); named
tasks and presets are in vlmo_fast/train/tasks.py.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch

from vlmo_fast.config import OBJECTIVES
from vlmo_fast.config_keys import check_section, copied, key, key_type, parse_text
from vlmo_fast.errors import UnknownNameError


@dataclass(frozen=True, kw_only=True)
class ModelKeys:
    """The architecture, its sizes and where its weights come from."""
    model_arch: str = key("vlmo_base_patch16", doc="a preset of vlmo_fast.config.ARCHS")
    image_size: int = key(224, ge=1)
    max_text_len: int = key(40, ge=1, doc="padded text length of the official batches")
    max_text_len_of_initckpt: int = key(196, ge=1, doc="text positions of the relative-position table")
    vocab_size: int = key(30522, ge=1)
    vqav2_label_size: int = key(3129, ge=1)
    drop_path_rate: float = key(0.1, ge=0, lt=1)
    load_path: str = key("", doc="an official file, a released weight's name, or a vlmo-fast model directory")
    trust_checkpoint: bool = key(False, official=False, doc="allow full unpickling of load_path (trusted files)")
    activation_checkpointing: bool = key(False, official=False)

    def __post_init__(self):
        check_section(self)


DEFAULT_LOSS_NAMES = {name: int(name in ("itm", "itc", "mlm")) for name in OBJECTIVES}  # pre-training


@dataclass(frozen=True, kw_only=True)
class ObjectiveKeys:
    """The losses of the run and how they see other ranks."""
    loss_names: dict[str, int | float] = key(
        DEFAULT_LOSS_NAMES, doc="weight > 0 enables an objective (and its heads); one left out keeps its default")
    itc_gather_grad: bool = key(True, official=False,
                                doc="all-gather contrastive features with gradient (exact); False = official")
    draw_false_image: int = key(0, ge=0)
    draw_false_text: int = key(0, ge=0)

    def __post_init__(self):
        check_section(self)
        unknown = sorted(set(self.loss_names) - set(OBJECTIVES))
        if unknown:
            raise UnknownNameError(f"unknown loss_names {unknown}; known: {list(OBJECTIVES)}")
        for name, weight in self.loss_names.items():
            if weight < 0:
                raise ValueError(f"loss_names.{name}={weight!r}: must be >= 0")
        object.__setattr__(self, "loss_names", {**DEFAULT_LOSS_NAMES, **self.loss_names})

    @property
    def enabled(self) -> tuple[str, ...]:
        """The objectives with a weight > 0, in the official order."""
        return tuple(name for name, weight in self.loss_names.items() if weight > 0)


@dataclass(frozen=True, kw_only=True)
class DataKeys:
    """Where the samples come from and how they are read, decoded and masked."""
    datasets: list[str] = key(["coco", "vg", "sbu", "gcc"])
    data_root: str = key("")
    data_format: Literal["arrow", "wds"] = key("arrow", official=False,
                                               doc="arrow (the official files) or wds (tar shards, streamed)")
    wds_shuffle_buffer: int = key(1000, ge=0, official=False, doc="data_format=wds: samples each worker shuffles")
    decoder: Literal["auto", "dali", "pil"] = key("auto", official=False,
                                                  doc="image decoding: auto = DALI on CUDA when installed, else PIL")
    num_workers: int = key(8, ge=0)
    train_transform_keys: list[str] = key(["square_transform_randaug"])
    val_transform_keys: list[str] = key(["square_transform"])
    image_only: bool = key(False)
    text_only: bool = key(False)
    tokenizer: str = key("bert-base-uncased")
    whole_word_masking: bool = key(False)
    mlm_prob: float = key(0.15, ge=0, le=1)

    def __post_init__(self):
        check_section(self)
        if not self.datasets:
            raise ValueError("datasets=[]: name at least one dataset")


@dataclass(frozen=True, kw_only=True)
class OptimKeys:
    """The optimizer, the batch it steps on, and when bad steps stop the run."""
    optim_type: Literal["adamw"] = key("adamw", doc="AdamW (betas 0.9/0.98), the official choice")
    learning_rate: float = key(1e-4, ge=0)
    weight_decay: float = key(0.01, ge=0)
    lr_mult: float = key(1.0, ge=0, doc="learning-rate factor of the task heads (VQA, NLVR2)")
    batch_size: int = key(1024, ge=1, doc="global batch: gradients are accumulated up to it")
    per_gpu_batchsize: int = key(4, ge=1, doc="the batch of one process in one micro-step")
    nan_limit: int = key(10, ge=1, official=False, doc="stop after this many steps skipped for a non-finite loss")

    def __post_init__(self):
        check_section(self)


@dataclass(frozen=True, kw_only=True)
class ScheduleKeys:
    """How long the run trains and the learning-rate schedule."""
    max_epoch: int = key(100, ge=1)
    max_steps: int | None = key(200000, ge=0, doc="None or 0: max_epoch epochs decide")
    max_train_steps: int | None = key(None, ge=0, official=False,
                                      doc="stop after this many optimizer steps (the schedule keeps max_steps)")
    warmup_steps: int | float = key(0.1, ge=0, doc="an int: steps; a float: fraction of the steps")
    end_lr: float = key(0.0, ge=0)
    decay_power: float = key(1.0)

    def __post_init__(self):
        check_section(self)


@dataclass(frozen=True, kw_only=True)
class EvalKeys:
    """The final evaluation."""
    test_only: bool = key(False, doc="evaluate load_path only (loaded as it is), no training")
    get_recall_metric: bool = key(False)
    get_recall_rerank_metric: bool = key(False)
    k_test: int = key(32, ge=1)
    itm_rerank_k: int = key(0, ge=0, official=False, doc="retrieval: re-rank the ITC top-k with ITM (0 = off)")
    eval_batch_size: int = key(64, ge=1, official=False)
    eval_limit: int = key(0, ge=0, official=False, doc="evaluate at most this many samples (0 = all)")
    val_check_interval: float = key(1.0, ge=0)

    def __post_init__(self):
        check_section(self)


@dataclass(frozen=True, kw_only=True)
class RuntimeKeys:
    """Where and how the run executes: device, precision, processes, seed, logs."""
    exp_name: str = key("vlmo")
    seed: int = key(1)
    log_dir: str = key("result")
    log_every: int = key(10, ge=1, official=False, doc="optimizer steps between log lines")
    device: str = key("auto", official=False, doc="auto = cuda when available, else cpu")
    precision: Literal["auto", "32", "bf16", "16", 32, 16] = key(
        "auto", official_default=16,
        doc="auto = bf16 on CUDA and on CPUs with bf16 matrix units, else 32; 16 = fp16 with a gradient scaler")
    compile: Literal[True, False, "auto"] = key(
        "auto", official=False, doc="torch.compile the whole training step (FSDP: the blocks); auto = CUDA, CPU bf16")
    strategy: Literal["ddp", "fsdp"] = key("ddp", official=False,
                                           doc="several processes: ddp (replicated) or fsdp (FSDP2, sharded)")
    num_gpus: int = key(1, ge=1)
    num_nodes: int = key(1, ge=1)
    use_sharded_training: bool = key(False)
    fast_dev_run: bool | int = key(False)

    def __post_init__(self):
        check_section(self)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as err:
                raise ValueError(f"device={self.device!r}: expected auto, cpu, cuda or cuda:N ({err})") from None


@dataclass(frozen=True, kw_only=True)
class CheckpointKeys:
    """Checkpoints of the run and resuming from them."""
    resume: Literal[True, False, "auto"] = key(False, official=False,
                                               doc="True: continue from log_dir/checkpoints; auto: if there is one")
    checkpoint_every: int = key(0, ge=0, official=False, doc="optimizer steps between checkpoints (0 = per epoch)")
    verify_checkpoint: bool = key(True, official=False, doc="hash a checkpoint's files before loading it")
    checkpoint_on_error: Literal["stop", "retry"] = key("stop", official=False,
                                                        doc="a save that fails: stop, or retry at the next interval")
    resume_from: str | None = key(None)
    resume_during_training: bool = key(False)

    def __post_init__(self):
        check_section(self)


SECTIONS: dict[str, type] = {"model": ModelKeys, "objectives": ObjectiveKeys, "data": DataKeys, "optim": OptimKeys,
                             "schedule": ScheduleKeys, "evaluation": EvalKeys, "runtime": RuntimeKeys,
                             "checkpoint": CheckpointKeys}
# official key name -> the section that holds it
SECTION_OF: dict[str, str] = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Every key of a run, checked; read as config.<section>.<official key>."""
    model: ModelKeys = field(default_factory=ModelKeys)
    objectives: ObjectiveKeys = field(default_factory=ObjectiveKeys)
    data: DataKeys = field(default_factory=DataKeys)
    optim: OptimKeys = field(default_factory=OptimKeys)
    schedule: ScheduleKeys = field(default_factory=ScheduleKeys)
    evaluation: EvalKeys = field(default_factory=EvalKeys)
    runtime: RuntimeKeys = field(default_factory=RuntimeKeys)
    checkpoint: CheckpointKeys = field(default_factory=CheckpointKeys)

    @classmethod
    def from_official(cls, keys: Mapping[str, Any]) -> "RunConfig":
        """A config from a dict of official (and vlmo-fast) keys; a missing key takes its default."""
        unknown = sorted(set(keys) - set(SECTION_OF))
        if unknown:
            raise UnknownNameError(f"unknown config keys {unknown}; known: {', '.join(SECTION_OF)}")
        parts: dict[str, dict] = {section: {} for section in SECTIONS}
        for name, value in keys.items():
            parts[SECTION_OF[name]][name] = value
        return cls(**{section: SECTIONS[section](**part) for section, part in parts.items()})

    def to_dict(self) -> dict[str, Any]:
        """Every key under its official name, section by section (JSON-able; from_official reads it back)."""
        return {f.name: copied(getattr(getattr(self, section), f.name))
                for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}

    def official(self) -> dict[str, Any]:
        """The official keys only: the config dict of the official code (what vlmo_fast.compat accepts)."""
        return {name: value for name, value in self.to_dict().items() if is_official(name)}

    def replace(self, **keys: Any) -> "RunConfig":
        """A copy with some keys (official names) changed, checked again."""
        return RunConfig.from_official({**self.to_dict(), **keys})

    def lines(self) -> list[str]:
        """The config as `key=value` lines under `# section` headers, in the command line's syntax (a dict key one
        line per entry, `loss_names.itm=1`)."""
        out = []
        for section, cls in SECTIONS.items():
            out.append(f"# {section}")
            for f in dataclasses.fields(cls):
                value = getattr(getattr(self, section), f.name)
                if isinstance(value, dict):
                    out += [f"{f.name}.{k}={v!r}" for k, v in value.items()]
                else:
                    out.append(f"{f.name}={format_value(f.name, value)}")
        return out


def format_value(name: str, value: Any) -> str:
    """The value of key `name` as the command line writes it: plain where parse_override reads it back as it is
    (`datasets=coco,vg`, `data_root=/data`), else the Python literal (`precision='16'`)."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        text = ",".join(value)
    else:
        text = value if isinstance(value, str) else repr(value)
    parsed = parse_override(name, text)
    return text if type(parsed) is type(value) and parsed == value else repr(value)


def is_official(name: str) -> bool:
    """Whether `name` is a key of the official config (else one vlmo-fast adds)."""
    return _field(name).metadata["official"]


def official_default(name: str) -> Any:
    """The official code's default of an official key."""
    f = _field(name)
    if f.metadata["official_default"] is not dataclasses.MISSING:
        return f.metadata["official_default"]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(SECTIONS[SECTION_OF[name]]) if f.name == name)


def parse_override(name: str, text: str) -> Any:
    """The value of `name=text` on the command line, read as the key's type expects (config_keys.parse_text);
    `loss_names.itm`: an entry of a dict key, read as the dict's values."""
    head, _, entry = name.partition(".")
    hint = key_type(SECTIONS[SECTION_OF[head]], head)
    return parse_text(typing.get_args(hint)[1] if entry else hint, text)
