"""Every named task resolves, builds at tiny dims and runs a CPU step plus its evaluation on the synthetic data."""
from __future__ import annotations

import json

import pytest

from tests.helpers import TINY
from vlmo_fast.compat.config import full_config
from vlmo_fast.train.tasks import STEP_PRESETS, TASKS, resolve
from vlmo_fast.train.trainer import Trainer

SYNTHETIC_OF = {"vqa": "synthetic_vqa", "nlvr2": "synthetic_nlvr2", "f30k": "synthetic_caption",
                "coco": "synthetic_caption", "wikibk": "synthetic_text", "synthetic_caption": "synthetic_caption",
                "synthetic_vqa": "synthetic_vqa", "synthetic_nlvr2": "synthetic_nlvr2",
                "synthetic_text": "synthetic_text"}


def synthetic_datasets(task: str) -> str:
    names = {SYNTHETIC_OF.get(d, "synthetic_caption") for d in TASKS[task]["datasets"]}
    return "datasets=" + ",".join(sorted(names))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_runs_one_step_and_evaluates(task, synthetic_root, tmp_path):
    config = resolve(task, TINY + [synthetic_datasets(task), f"data_root={synthetic_root}", f"log_dir={tmp_path}",
                                   "max_train_steps=1"])
    full_config(config.official())  # the official part is a valid official config
    metrics = Trainer(config).fit()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 1 and log[-1]["loss"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    losses = config.objectives.loss_names
    if losses["vqa"]:
        assert {"vqa/val/score", "vqa/val/majority_baseline"} <= set(metrics)
        assert (tmp_path / "vqa_submission.json").is_file()
    if losses["nlvr2"]:
        assert "nlvr2/dev/accuracy" in metrics
    if losses["irtr"] or config.evaluation.get_recall_metric:
        assert {f"recalls/{d}_r{k}" for d in ("ir", "tr") for k in (1, 5, 10)} <= set(metrics)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_presets_and_overrides():
    c = resolve("task_finetune_vqa_base_image480", ["step200k", "per_gpu_batchsize=32", "datasets=vqa,coco",
                                                    "loss_names.itm=1", "load_path=x.ckpt"]).to_dict()
    assert (c["max_steps"], c["warmup_steps"]) == (STEP_PRESETS["step200k"]["max_steps"], 2500)
    assert c["datasets"] == ["vqa", "coco"] and c["loss_names"]["itm"] == 1 and c["lr_mult"] == 20
    assert resolve("task_mlm_itm_itc_large").model.model_arch == "vlmo_large_patch16"
    with pytest.raises(KeyError, match="unknown config key 'batchsize'"):
        resolve("task_finetune_vqa_base_image480", ["batchsize=3"])
    with pytest.raises(KeyError, match="unknown task or preset 'task_nope'"):
        resolve("task_nope")


def test_cli_prints_bad_names_and_keeps_tracebacks_of_bugs(monkeypatch, capsys):
    from vlmo_fast import cli

    assert cli.main(["train", "task_mlm_itm_itc_tiny", "batchsize=3"]) == 2
    assert capsys.readouterr().err.strip() == "vlmo-fast: error: unknown config key 'batchsize' in 'batchsize=3'"

    def broken(config):
        raise KeyError("betas")  # an internal lookup failing is a bug: its traceback must reach the user
    monkeypatch.setattr("vlmo_fast.train.trainer.Trainer", broken)
    with pytest.raises(KeyError, match="betas"):
        cli.main(["train", "task_mlm_itm_itc_tiny"])
