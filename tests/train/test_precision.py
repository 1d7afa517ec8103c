"""precision=auto on the CPU: bf16 autocast where the CPU multiplies bf16 natively, and its loss curve stays with
fp32's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY
from vlmo_fast.train.runtime import autocast_dtype, cpu_has_bf16_matmul
from vlmo_fast.train.tasks import resolve
from vlmo_fast.train.trainer import Trainer


def test_auto_is_bf16_where_the_cpu_has_bf16_matrix_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("vlmo_fast.train.runtime.cpu_has_bf16_matmul", lambda: True)
    assert autocast_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr("vlmo_fast.train.runtime.cpu_has_bf16_matmul", lambda: False)
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("32", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16


def curve(root, log_dir: Path, precision: str) -> list[float]:
    config = resolve("task_mlm_itm_itc_tiny", TINY + [f"data_root={root}", f"log_dir={log_dir}", "max_train_steps=50",
                                                      f"precision={precision}", "get_recall_metric=False",
                                                      "compile=False"])
    Trainer(config).fit()
    return [json.loads(line)["loss"] for line in (log_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not cpu_has_bf16_matmul(), reason="the CPU has no bf16 matrix units")
def test_bf16_loss_curve_within_2_percent_of_fp32(synthetic_root, tmp_path):
    fp32, bf16 = curve(synthetic_root, tmp_path / "fp32", "32"), curve(synthetic_root, tmp_path / "bf16", "bf16")
    assert len(fp32) == len(bf16) == 50
    rel = [abs(b - a) / abs(a) for a, b in zip(fp32, bf16)]
    assert max(rel) < 0.02, f"largest relative gap {max(rel):.4f} at step {rel.index(max(rel)) + 1}"
    assert fp32 != bf16  # the two runs did compute in different precisions
