"""Durable writes and the manifest: the streamed safetensors file is the one safetensors writes, every file and
its directory are fsynced, a failed write leaves the old file, and verification names what is wrong."""
from __future__ import annotations

import errno
import io
import os

import pytest
import torch
from safetensors.torch import save

from tests.helpers import TINY
from vlmo_fast.checkpoint import durable
from vlmo_fast.checkpoint.durable import hash_file, write_durably, write_text_durably
from vlmo_fast.checkpoint.manifest import MANIFEST, CorruptCheckpointError, check_intact, verify, write_manifest
from vlmo_fast.checkpoint.native import load_model, save_model
from vlmo_fast.checkpoint.safetensors_stream import write_safetensors
from vlmo_fast.train.build import build_model
from vlmo_fast.train.tasks import resolve


@pytest.fixture
def fsynced(monkeypatch) -> list[str]:
    """The paths os.fsync was called on, in order (read from the descriptor at the time of the call)."""
    calls: list[str] = []
    real = os.fsync

    def record(fd):
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(os, "fsync", record)
    return calls


def test_streamed_safetensors_is_the_safetensors_file():
    g = torch.Generator().manual_seed(0)
    sd = {"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g).bfloat16(), "ids": torch.arange(7),
          "flag": torch.tensor(True), "empty": torch.zeros(0, 4), "scale": torch.tensor(2.5, dtype=torch.float64)}
    for metadata in (None, {"format": "pt"}):
        out = io.BytesIO()
        write_safetensors(sd, out, metadata)
        assert out.getvalue() == save(sd, metadata)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads fsynced paths from /proc")
def test_write_durably_fsyncs_the_file_then_its_directory(tmp_path, fsynced):
    record = write_durably(tmp_path / "a.bin", lambda f: f.write(b"x" * 1000))
    assert fsynced == [str(tmp_path / "a.bin.tmp"), str(tmp_path)]  # the data before the rename, the entry after
    assert (tmp_path / "a.bin").read_bytes() == b"x" * 1000 and record == hash_file(tmp_path / "a.bin")


def test_failed_write_keeps_the_old_file_and_names_the_cause(tmp_path, monkeypatch):
    write_text_durably(tmp_path / "state.pt", "old")

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(durable.HashingWriter, "write", full_disk)
    # torch.save swallows the writer's exception and fails later with its own message: the cause is reported
    with pytest.raises(OSError, match="No space left on device"):
        write_durably(tmp_path / "state.pt", lambda f: torch.save({"x": torch.ones(100)}, f))
    assert (tmp_path / "state.pt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def _checkpoint(tmp_path):
    records = {"model.safetensors": write_durably(tmp_path / "model.safetensors", lambda f: f.write(b"\1" * 4000)),
               "trainer.pt": write_durably(tmp_path / "trainer.pt", lambda f: f.write(b"\2" * 300))}
    (tmp_path / "shards").mkdir()
    records["shards/__0_0.distcp"] = write_durably(tmp_path / "shards" / "__0_0.distcp", lambda f: f.write(b"\3"))
    write_manifest(tmp_path, records, step=7)
    return tmp_path


def test_verify_names_every_damage(tmp_path):
    ckpt = _checkpoint(tmp_path)
    assert verify(ckpt) == []
    (ckpt / "model.safetensors").write_bytes(b"\1" * 2000)                    # the power-loss truncation
    (ckpt / "trainer.pt").write_bytes(bytes(300))                             # same size, zero-filled
    (ckpt / "shards" / "__0_0.distcp").unlink()
    assert verify(ckpt) == ["model.safetensors is truncated (2 kB of 4 kB)",
                            "shards/__0_0.distcp is missing",
                            "trainer.pt is zero-filled (its sha256 differs from the one recorded when it was written)"]
    # verify_checkpoint=False: sizes only (cheap), so the zero-filled file of the right size passes
    assert verify(ckpt, hashes=False) == ["model.safetensors is truncated (2 kB of 4 kB)",
                                          "shards/__0_0.distcp is missing"]
    with pytest.raises(CorruptCheckpointError, match=f"{ckpt}: model.safetensors is truncated"):
        check_intact(ckpt, only=["model.safetensors"])
    assert verify(ckpt, only=["trainer.pt", "config.json"], hashes=False) == [f"config.json is not in {MANIFEST}"]


def test_unreadable_manifest_and_exact_sizes(tmp_path):
    ckpt = _checkpoint(tmp_path)
    (ckpt / "model.safetensors").write_bytes(b"\1" * 3999)  # sizes that round alike are given in bytes
    assert verify(ckpt, hashes=False) == ["model.safetensors is truncated (3,999 of 4,000 bytes)"]
    (ckpt / MANIFEST).write_bytes(bytes(50))
    assert verify(ckpt)[0].startswith(f"{MANIFEST} is unreadable")
    (ckpt / MANIFEST).unlink()
    assert verify(ckpt) == [f"{MANIFEST} is missing"]


def test_load_path_and_load_model_refuse_a_damaged_checkpoint(tmp_path):
    """load_path= of a vlmo-fast checkpoint is verified as a resume is: sizes always, hashes unless
    verify_checkpoint=False; load_model (predict) verifies the same way."""
    config = resolve("task_mlm_itm_itc_tiny", TINY + [f"load_path={tmp_path}"])
    model = build_model(config.replace(load_path=""), torch.device("cpu"))
    save_model(model, tmp_path)
    loaded = build_model(config, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(weights.stat().st_size))
    with pytest.raises(CorruptCheckpointError, match=f"{tmp_path}: model.safetensors is zero-filled"):
        build_model(config, torch.device("cpu"))
    with pytest.raises(CorruptCheckpointError, match="model.safetensors is zero-filled"):
        load_model(tmp_path)
    os.truncate(weights, 1000)
    with pytest.raises(CorruptCheckpointError, match=r"model.safetensors is truncated \(1 kB of "):
        build_model(config.replace(verify_checkpoint=False), torch.device("cpu"))
