"""Choosing the checkpoint to resume from: the newest intact one ("last" before a step checkpoint of the same step),
damaged ones named in one warning, a checkpoint from before manifests loaded unverified, and with none intact an
error rather than a fresh start.  (The trainer end to end: tests/distributed/test_faults.py.)"""
from __future__ import annotations

import logging

import pytest
import torch

from vlmo_fast.checkpoint.durable import write_durably
from vlmo_fast.checkpoint.manifest import CorruptCheckpointError, write_manifest
from vlmo_fast.train import intact
from vlmo_fast.train.intact import has_checkpoint, latest_checkpoint


def checkpoint(directory, name: str, step: int, manifest: bool = True):
    path = directory / name
    path.mkdir(parents=True)
    records = {"model.safetensors": write_durably(path / "model.safetensors", lambda f: f.write(bytes(range(200)))),
               "trainer.pt": write_durably(path / "trainer.pt",
                                           lambda f: torch.save({"position": {"step": step}}, f))}
    if manifest:
        write_manifest(path, records, step)
    return path


def test_newest_intact_is_chosen_and_damage_named_once(tmp_path, caplog):
    assert not has_checkpoint(tmp_path)
    (tmp_path / ".step_00000009.tmp").mkdir()  # a killed save's temporary directory is no checkpoint
    (tmp_path / ".step_00000009.tmp" / "trainer.pt").write_bytes(b"x")
    assert not has_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        latest_checkpoint(tmp_path)
    checkpoint(tmp_path, "step_00000002", 2)
    checkpoint(tmp_path, "step_00000004", 4)
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    last = checkpoint(tmp_path, "last", 4)
    assert latest_checkpoint(tmp_path) == last
    (last / "model.safetensors").write_bytes(bytes(100))
    (tmp_path / "step_00000004" / "trainer.pt").unlink()
    with caplog.at_level(logging.WARNING, logger=intact.__name__):
        assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path.name}/last: model.safetensors is truncated (100 bytes of 200 bytes); {tmp_path.name}/step_00000004:"
        " trainer.pt is missing; resuming from the newest intact checkpoint, step_00000002"]
    (tmp_path / "step_00000002" / "manifest.json").write_bytes(bytes(10))
    with pytest.raises(CorruptCheckpointError, match="no intact checkpoint to resume from .*step_00000002: "
                                                     "manifest.json is unreadable"):
        latest_checkpoint(tmp_path)
    assert has_checkpoint(tmp_path)  # so resume=auto stops with that error instead of starting afresh


def test_checkpoint_without_manifest_resumes_unverified(tmp_path, caplog):
    """Checkpoints written before manifests existed still resume, with a warning, by the step in their state."""
    checkpoint(tmp_path, "step_00000003", 3, manifest=False)
    checkpoint(tmp_path, "step_00000001", 1)
    with caplog.at_level(logging.WARNING, logger=intact.__name__):
        assert latest_checkpoint(tmp_path).name == "step_00000003"
    assert "has no manifest.json" in caplog.text and "unverified" in caplog.text
