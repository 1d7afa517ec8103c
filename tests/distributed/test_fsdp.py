"""The trainer under torchrun with strategy=fsdp (2 processes, gloo): the loss curve of DDP within fp32 tolerance,
sharded checkpoints through torch.distributed.checkpoint, a resume that continues the curve bit for bit, and a
resume of those shards under DDP."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.distributed.common import torchrun
from tests.helpers import TINY
from vlmo_fast.checkpoint.manifest import read_manifest, verify


def train(root, log_dir: Path, *extra: str) -> list[float]:
    torchrun("-m", "vlmo_fast.cli", "train", "task_mlm_itm_itc_tiny", *TINY, f"data_root={root}",
             f"log_dir={log_dir}", "drop_path_rate=0.1", "eval_limit=8", *extra)
    return [json.loads(line)["loss"] for line in (log_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fsdp_matches_ddp_and_resumes_exactly(synthetic_root, tmp_path):
    ddp = train(synthetic_root, tmp_path / "ddp", "max_train_steps=4")
    fsdp = train(synthetic_root, tmp_path / "fsdp", "strategy=fsdp", "max_train_steps=4")
    assert len(fsdp) == 4
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(ddp), rtol=1e-5, atol=1e-5)

    last = tmp_path / "fsdp" / "checkpoints" / "last"
    assert (last / "shards" / ".metadata").is_file() and (last / "model.safetensors").is_file()
    # the manifest covers every rank's shards (hashed by the rank that wrote them) and the coordinator's metadata
    files = set(read_manifest(last)["files"])
    assert {"shards/.metadata", "shards/__0_0.distcp", "shards/__1_0.distcp", "trainer.pt"} <= files
    assert files == {p.relative_to(last).as_posix() for p in last.rglob("*") if p.is_file()} - {"manifest.json"}
    assert verify(last) == []
    assert "recalls/ir_r1" in json.loads((tmp_path / "fsdp" / "metrics.json").read_text())

    cut = tmp_path / "cut"
    assert len(train(synthetic_root, cut, "strategy=fsdp", "max_train_steps=2")) == 2
    assert train(synthetic_root, cut, "strategy=fsdp", "max_train_steps=4", "resume=True") == fsdp
    # the sharded checkpoint also resumes under DDP (the shards are gathered on load)
    resumed = train(synthetic_root, cut, "max_train_steps=5", "resume=True")
    assert resumed[:4] == fsdp and len(resumed) == 5
