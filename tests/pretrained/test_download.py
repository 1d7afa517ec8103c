"""Official weights by name, end to end against a local server through VLMO_FAST_MIRROR: download into the cache,
cache hits without the network, resume after a cut connection (with and without Range support), corrupt and
truncated cached files re-fetched, VLMO_FAST_OFFLINE=1, from_pretrained and `train ... load_path=NAME`."""
from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import threading

import pytest
import torch

from tests.helpers import TINY, official_bytes
from tests.pretrained.server import FileServer
from vlmo_fast.cli import main
from vlmo_fast.pretrained import (PRETRAINED, Cache, OfflineError, PretrainedWeight, cached_file, from_pretrained,
                                  register)

NAME = "vlmo_tiny_patch16_64"
FILE = f"{NAME}.pt"


@pytest.fixture(scope="module")
def checkpoint():
    return official_bytes()


@pytest.fixture
def server(checkpoint, tmp_path, monkeypatch):
    """The tiny weight registered under NAME, served through VLMO_FAST_MIRROR, with an empty cache."""
    register(PretrainedWeight(name=NAME, file=FILE, url="https://example.invalid/" + FILE, arch="vlmo_tiny_patch16",
                              image_size=64, heads=("itm", "itc", "mlm"), task="task_mlm_itm_itc_tiny"))
    with FileServer() as srv:
        srv.files[FILE] = checkpoint[0]
        monkeypatch.setenv("VLMO_FAST_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("VLMO_FAST_MIRROR", srv.url)
        monkeypatch.delenv("VLMO_FAST_OFFLINE", raising=False)
        yield srv
    del PRETRAINED[NAME]


def test_download_then_cache_hit_offline_and_from_pretrained(server, checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLMO_FAST_OFFLINE", "1")
    with pytest.raises(OfflineError, match=rf"VLMO_FAST_OFFLINE=1.*{FILE}.*not in the cache"):
        cached_file(NAME, progress=False)
    assert server.requests == []
    monkeypatch.delenv("VLMO_FAST_OFFLINE")

    assert main(["download", NAME]) == 0
    path = tmp_path / "cache" / FILE
    assert capsys.readouterr().out.strip() == str(path)
    assert path.read_bytes() == checkpoint[0]
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())[FILE]
    assert manifest["size"] == len(checkpoint[0])
    assert manifest["sha256"] == hashlib.sha256(checkpoint[0]).hexdigest()
    assert manifest["url"] == f"{server.url}/{FILE}"
    assert not (tmp_path / "cache" / (FILE + ".part")).exists()

    monkeypatch.setenv("VLMO_FAST_MIRROR", "http://127.0.0.1:9")  # nothing listens: a cache hit must not ask
    assert cached_file(NAME, progress=False) == path
    monkeypatch.setenv("VLMO_FAST_OFFLINE", "1")
    model = from_pretrained(NAME)
    assert len(server.requests) == 1
    own = model.state_dict()
    for k, v in checkpoint[1].items():
        if not k.endswith("relative_position_index"):
            assert torch.equal(own[k], v), k
    assert model.load_report.missing == [] and not model.training

    assert main(["pretrained"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME))
    assert row.split()[-1] == "yes"


def test_resume_after_cut_connection_uses_range(server, checkpoint):
    server.cuts_left = 1
    path = cached_file(NAME, progress=False)
    assert path.read_bytes() == checkpoint[0]
    half = len(checkpoint[0]) // 2
    assert server.requests == [(f"/{FILE}", None), (f"/{FILE}", f"bytes={half}-")]


def test_cut_connection_without_range_support_downloads_again(server, checkpoint):
    server.cuts_left, server.honour_range = 1, False
    assert cached_file(NAME, progress=False).read_bytes() == checkpoint[0]
    assert len(server.requests) == 2  # the server ignored Range: the second response was the whole file


def test_connection_cut_every_time_fails_and_keeps_the_bytes(server, checkpoint, tmp_path):
    server.cuts_left = 10
    with pytest.raises(ValueError, match="run again to resume"):
        cached_file(NAME, progress=False)
    assert not (tmp_path / "cache" / FILE).exists()
    assert (tmp_path / "cache" / (FILE + ".part")).stat().st_size > len(checkpoint[0]) // 2
    server.cuts_left = 0
    assert cached_file(NAME, progress=False).read_bytes() == checkpoint[0]
    assert server.requests[-1][1] is not None  # the last try resumed


@pytest.mark.parametrize("damage", ["flip_a_byte", "truncate"])
def test_corrupt_or_truncated_cache_is_fetched_again(server, checkpoint, monkeypatch, damage):
    path = cached_file(NAME, progress=False)
    data = bytearray(path.read_bytes())
    if damage == "flip_a_byte":
        data[len(data) // 3] ^= 0xFF
    else:
        del data[-100:]
    path.write_bytes(bytes(data))
    monkeypatch.setenv("VLMO_FAST_OFFLINE", "1")
    with pytest.raises(OfflineError, match="sha256" if damage == "flip_a_byte" else "bytes"):
        cached_file(NAME, progress=False)
    monkeypatch.delenv("VLMO_FAST_OFFLINE")
    assert cached_file(NAME, progress=False).read_bytes() == checkpoint[0]
    assert len(server.requests) == 2


def test_mirror_serves_official_names(server, tmp_path):
    """A released weight is fetched from MIRROR/<official file name>; its bytes are stored as they came."""
    payload = b"not a real checkpoint, only bytes"
    server.files["vlmo_base_patch16_224.pt"] = payload
    server.files["beit_base_patch16_224_pt22k_ft22kto1k.pth"] = payload[::-1]
    assert cached_file("vlmo_base_patch16_224", progress=False).read_bytes() == payload
    assert cached_file("beit_base_patch16_224_pt22k_ft22kto1k", progress=False).read_bytes() == payload[::-1]
    assert [r[0] for r in server.requests] == ["/vlmo_base_patch16_224.pt",
                                              "/beit_base_patch16_224_pt22k_ft22kto1k.pth"]
    assert Cache(tmp_path / "cache").record("vlmo_base_patch16_224.pt").size == len(payload)


def test_unknown_name_is_a_clear_error(server, capsys):
    assert main(["download", "vlmo_huge_patch16_224"]) == 2
    assert "unknown pretrained weight 'vlmo_huge_patch16_224'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="neither a file"):
        from_pretrained("vlmo_huge_patch16_224")


def test_train_starts_from_a_weight_by_name(server, synthetic_root, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert main(["train", "task_mlm_itm_itc_tiny", *TINY, f"data_root={synthetic_root}", f"log_dir={tmp_path / 'run'}",
                 f"load_path={NAME}", "max_train_steps=1"]) == 0
    assert f"loaded {tmp_path / 'cache' / FILE}" in caplog.text
    assert "truncated text positions 40 -> 24" in caplog.text  # the official fine-tuning conversion ran
    assert (tmp_path / "run" / "log.jsonl").read_text().count("\n") == 1


def test_concurrent_processes_download_once(server, checkpoint):
    """Ranks of one run resolving the same name: the cache lock lets one download while the others wait."""
    server.delay_s = 0.3
    results = []
    threads = [threading.Thread(target=lambda: results.append(cached_file(NAME, progress=False))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(p.read_bytes() == checkpoint[0] for p in results)
    assert len(server.requests) == 1


def test_offline_records_a_file_placed_by_hand(server, checkpoint, tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / FILE).write_bytes(checkpoint[0])
    monkeypatch.setenv("VLMO_FAST_OFFLINE", "1")
    assert cached_file(NAME, progress=False) == tmp_path / "cache" / FILE
    assert Cache(tmp_path / "cache").record(FILE).sha256 == hashlib.sha256(checkpoint[0]).hexdigest()
    assert server.requests == []


def test_beit_weight_loads_converted_for_text_pretraining(server, official_dir):
    """A BEiT file by name: from_pretrained applies the official stage-1 -> 2 conversion; the backbone equals the
    official model that loaded the same file (fixture interp_units: textpt_model)."""
    from tests.helpers import FixtureSet

    units = FixtureSet.load(official_dir, "interp_units")
    buf = io.BytesIO()
    torch.save({"model": units.group("beit_in")}, buf)
    server.files["beit_tiny.pth"] = buf.getvalue()
    register(PretrainedWeight(name="beit_tiny", file="beit_tiny.pth", url="https://example.invalid/beit_tiny.pth",
                              arch="vlmo_tiny_patch16", image_size=64, heads=("textmlm",), max_text_len=196,
                              task=None, beit=True))
    try:
        model = from_pretrained("beit_tiny")
    finally:
        del PRETRAINED["beit_tiny"]
    assert model.cfg.vl_start == model.cfg.depth  # stage 2: no VL expert
    own, want = model.state_dict(), units.group("textpt_model")
    # The official load left the text experts at their (seeded) initialisation: those keys are reported missing
    # here too, and every other backbone key equals the official model's.
    official_missing = set(ast.literal_eval(units.meta["textpt"]["missing_keys_line"][0].split(": ", 1)[1]))
    assert set(model.load_report.missing) & set(want) == official_missing & set(want) != set()
    loaded = [k for k in want if k not in official_missing]
    assert len(loaded) > 40 and all(torch.equal(own[k], want[k]) for k in loaded)
    assert any("converted BEiT" in n for n in model.load_report.notes)
