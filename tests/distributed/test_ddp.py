"""Two-process gloo runs under torchrun: a DDP step and an FSDP2 step each equal one process on the concatenated
batch; the trainer runs under torchrun, and an FSDP run checkpoints its shards and resumes exactly."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.distributed.common import REPO, build_model, global_batch, global_negatives, torchrun
from tests.helpers import TINY
from vlmo_fast.cli import main
from vlmo_fast.train.step import StepDraws, pretrain_losses


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_data_parallel_step_equals_single_process_on_concatenated_batch(strategy, tmp_path):
    out = tmp_path / "rank0.pt"
    torchrun(str(REPO / "tests" / "distributed" / "ddp_worker.py"), strategy, str(out))
    ddp = torch.load(out, weights_only=True)

    model = build_model()
    losses, _ = pretrain_losses(model, global_batch(model.cfg), {"itc", "itm", "mlm"}, gather_grad=True,
                                draws=StepDraws(negatives=global_negatives()))
    # The global ITC loss is the same on every rank; ITM and MLM are means whose rank average is the global mean.
    torch.testing.assert_close(ddp["losses"]["itc_loss"], losses["itc_loss"], rtol=1e-5, atol=1e-6)
    rank_mean = sum(ddp["rank_losses"]) / len(ddp["rank_losses"])
    torch.testing.assert_close(rank_mean - ddp["losses"]["itc_loss"], losses["itm_loss"] + losses["mlm_loss"],
                               rtol=1e-5, atol=1e-5)
    sum(losses.values()).backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp["params"][k], v, rtol=1e-4, atol=2e-6, msg=k)


@pytest.mark.slow
def test_num_gpus_runs_the_trainer_under_torchrun(synthetic_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "vlmo_fast.cli", "train", "task_mlm_itm_itc_tiny", *TINY, f"data_root={synthetic_root}",
           f"log_dir={tmp_path}", "max_train_steps=2", "checkpoint_every=1", "eval_limit=8", "num_gpus=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    last = tmp_path / "checkpoints" / "last"
    assert (last / "model.safetensors").is_file()
    assert len(torch.load(last / "trainer.pt", weights_only=True)["rng"]) == 2  # one RNG state per process
    assert "recalls/ir_r1" in json.loads((tmp_path / "metrics.json").read_text())


def test_several_nodes_need_torchrun_on_each(monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["train", "task_mlm_itm_itc_tiny", "num_nodes=2", "num_gpus=8"]) == 2
    err = capsys.readouterr().err
    assert "--nnodes=2" in err and "--nproc_per_node=8" in err and "num_nodes=2" in err
