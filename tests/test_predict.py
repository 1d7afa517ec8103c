"""Every predict command checks the heads it needs and says clearly what is missing; official checkpoint files
predict too."""
from __future__ import annotations

import pytest
from PIL import Image

from tests.helpers import official_bytes
from vlmo_fast.checkpoint import save_model
from vlmo_fast.cli import main
from vlmo_fast.config import preset
from vlmo_fast.model.vlmo import VLMo


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(d / "red.png")
    return d


def _tiny(tmp_path, tasks: tuple[str, ...]) -> str:
    return str(save_model(VLMo(preset("vlmo_tiny_patch16", image_size=64, tasks=tasks)), tmp_path / "ckpt"))


@pytest.mark.parametrize("mode", ["retrieve", "embed"])
def test_itc_commands_on_a_vqa_checkpoint(tmp_path, images, capsys, mode):
    ckpt = _tiny(tmp_path, ("vqa",))
    extra = ["--text", "a red box"] if mode == "retrieve" else ["--out", str(tmp_path / "f.safetensors")]
    assert main(["predict", mode, ckpt, "--images", str(images), *extra]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt} has no ITC heads" in err and "task_finetune_irtr_" in err and "its heads: vqa" in err


def test_vqa_on_a_retrieval_checkpoint(tmp_path, images, capsys):
    ckpt = _tiny(tmp_path, ("irtr",))
    assert main(["predict", "vqa", ckpt, "--image", str(images / "red.png"), "--question", "what?"]) == 2
    assert "has no VQA head: fine-tune with a task_finetune_vqa_* task first" in capsys.readouterr().err


def test_retrieve_with_an_official_file(tmp_path, images, capsys):
    (tmp_path / "official.pt").write_bytes(official_bytes()[0])
    assert main(["predict", "retrieve", str(tmp_path / "official.pt"), "--images", str(images),
                 "--text", "a red box", "--top-k", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith("red.png")
