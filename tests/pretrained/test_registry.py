"""The registry holds every weight of the official README (microsoft/unilm vlmo/README.md) with its URL, and each
entry builds: its arch is a preset, its task an official config of the same arch and image size."""
from __future__ import annotations

import torch

from tests.helpers import official_bytes
from vlmo_fast.config import ARCHS
from vlmo_fast.pretrained import PRETRAINED, from_pretrained
from vlmo_fast.train.tasks import TASKS

BLOB = "https://conversationhub.blob.core.windows.net/beit-share-public"
README_FILES = [f"vlmo_{s}_patch16_{kind}.pt" for s in ("base", "base_plus", "large")
                for kind in ("224", "224_stage2", "480_vqa", "384_nlvr2", "384_coco", "384_f30k")]


def test_every_official_weight_with_its_url():
    official = {w.file: w for w in PRETRAINED.values() if w.url.startswith(BLOB)}
    assert sorted(official) == sorted(README_FILES + ["beit_base_patch16_224_pt22k_ft22kto1k.pth"])
    for file, w in official.items():
        folder = "beit" if file.startswith("beit") else "vlmo"
        assert w.url == f"{BLOB}/{folder}/{file}" and w.name == file.rsplit(".", 1)[0]


def test_entries_fit_their_task_configs():
    for w in PRETRAINED.values():
        assert w.arch in ARCHS, w.name
        if w.task is not None:
            task = TASKS[w.task]
            assert task["model_arch"] == w.arch, w.name
            assert task.get("image_size", 224) == w.image_size, w.name
            assert {k for k, v in task["loss_names"].items() if v} == set(w.heads), w.name
        assert w.init_from is None or w.init_from in PRETRAINED, w.name
    assert PRETRAINED["vlmo_large_patch16_384_coco"].result == "COCO TR@1 78.2 IR@1 60.6"
    assert PRETRAINED["vlmo_base_patch16_384_f30k"].init_from == "vlmo_base_patch16_384_coco"


def test_from_pretrained_reads_an_official_file_by_path(tmp_path):
    """Arch, grid, text length and heads come from the file's tensors; other sizes convert as the official load."""
    data, sd = official_bytes()
    (tmp_path / "w.pt").write_bytes(data)
    model = from_pretrained(str(tmp_path / "w.pt"))
    assert (model.cfg.embed_dim, model.cfg.image_size, model.cfg.max_text_len) == (96, 64, 40)
    assert model.cfg.tasks == ("itm", "itc", "mlm")
    assert torch.equal(model.state_dict()["itc_text_proj.fc.weight"], sd["itc_text_proj.fc.weight"])
    bigger = from_pretrained(str(tmp_path / "w.pt"), image_size=96, heads=("vqa",))
    assert bigger.cfg.image_size == 96 and hasattr(bigger, "vqa_classifier")
    assert any("resized relative_position_bias_table" in n for n in bigger.load_report.notes)
