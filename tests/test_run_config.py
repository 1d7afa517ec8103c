"""The run config: every key typed and checked at construction with an error naming the key, the official dict
mapped onto it and back, and its printed form read back by the command line."""
from __future__ import annotations

import pytest

from vlmo_fast.compat.config import OFFICIAL_DEFAULTS, full_config
from vlmo_fast.errors import UnknownNameError
from vlmo_fast.run_config import RunConfig
from vlmo_fast.train.tasks import STEP_PRESETS, TASKS, resolve


@pytest.mark.parametrize("override, message", [
    ("per_gpu_batchsize=-3", "per_gpu_batchsize=-3: must be >= 1"),
    ("batch_size=0", "batch_size=0: must be >= 1"),
    ("learning_rate=abc", "learning_rate='abc': expected a number"),
    ("learning_rate=True", "learning_rate=True: expected a number"),
    ("seed=1.5", "seed=1.5: expected an integer"),
    ("mlm_prob=1.5", "mlm_prob=1.5: must be <= 1"),
    ("drop_path_rate=1", "drop_path_rate=1.0: must be < 1"),
    ("max_train_steps=x", "max_train_steps='x': expected an integer or None"),
    ("warmup_steps=-1", "warmup_steps=-1: must be >= 0"),
    ("strategy=x", "strategy='x': expected one of ddp, fsdp"),
    ("precision=8", "precision=8: expected one of auto, 32, bf16, 16"),
    ("resume=1", "resume=1: expected one of True, False, auto"),
    ("verify_checkpoint=yes", "verify_checkpoint='yes': expected True or False"),
    ("datasets=1", "datasets=1: expected a list of str"),
    ("loss_names.itm=-1", "loss_names.itm=-1: must be >= 0"),
    ("device=tpu9", "device='tpu9': expected auto, cpu, cuda or cuda:N"),
])
def test_a_bad_value_is_an_error_naming_its_key(override, message):
    with pytest.raises(ValueError) as err:
        resolve("task_mlm_itm_itc_tiny", [override])
    assert str(err.value).startswith(message)


def test_unknown_keys_and_objectives_are_named():
    with pytest.raises(UnknownNameError, match="unknown config keys \\['batchsize'\\]"):
        RunConfig.from_official({"batchsize": 3})
    with pytest.raises(UnknownNameError, match="unknown loss_names \\['foo'\\]"):
        resolve("task_mlm_itm_itc_tiny", ["loss_names.foo=1"])
    with pytest.raises(UnknownNameError, match="'seed' is not a dict key"):
        resolve("task_mlm_itm_itc_tiny", ["seed.x=1"])


def test_values_are_read_as_their_key_types():
    c = resolve("task_mlm_itm_itc_tiny", ["exp_name=1e5", "learning_rate=1", "warmup_steps=300", "warmup_steps=0.2",
                                          "datasets=coco,f30k", "precision=bf16", "resume=auto", "resume_from=None"])
    assert c.runtime.exp_name == "1e5"  # a string key keeps its text
    assert c.optim.learning_rate == 1.0 and isinstance(c.optim.learning_rate, float)
    assert c.schedule.warmup_steps == 0.2  # an int is a step count, a float a fraction: both kept as given
    assert c.data.datasets == ["coco", "f30k"] and c.runtime.precision == "bf16"
    assert c.checkpoint.resume == "auto" and c.checkpoint.resume_from is None
    assert resolve("task_mlm_itm_itc_tiny", ["warmup_steps=300"]).schedule.warmup_steps == 300


def test_official_defaults_map_onto_the_config_and_back():
    config = RunConfig.from_official(OFFICIAL_DEFAULTS)
    assert config.official() == OFFICIAL_DEFAULTS
    assert config.runtime.precision == 16 and RunConfig().runtime.precision == "auto"  # vlmo-fast's own default
    assert config.objectives.enabled == ("itm", "itc", "mlm")
    partial = {"loss_names": {"vqa": 1, "itm": 0}}  # entries left out keep their defaults, as compat's full_config
    assert RunConfig.from_official(partial).objectives.loss_names == full_config(partial)["loss_names"]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_round_trips(name):
    """from_official(to_dict()) and the printed lines (as command-line overrides) give the same config; the
    official part is a valid config of the official code."""
    config = resolve(name)
    assert RunConfig.from_official(config.to_dict()) == config
    assert resolve(None, [line for line in config.lines() if not line.startswith("#")]) == config
    assert full_config(config.official())["model_arch"] == config.model.model_arch


def test_replace_checks_again_and_presets_apply_in_order():
    config = resolve("task_finetune_vqa_base_image480", ["step200k", "max_steps=7"])
    assert (config.schedule.max_steps, config.schedule.warmup_steps) == (7, STEP_PRESETS["step200k"]["warmup_steps"])
    assert config.replace(per_gpu_batchsize=8).optim.per_gpu_batchsize == 8
    with pytest.raises(ValueError, match="per_gpu_batchsize=0: must be >= 1"):
        config.replace(per_gpu_batchsize=0)
