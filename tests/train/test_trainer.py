"""The trainer end to end on the CPU: a golden loss curve, exact resume, non-finite losses, the README's main job,
plot, predict and bench."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import TINY, losses, run
from vlmo_fast.cli import main
from vlmo_fast.train.runtime import autocast_dtype
from vlmo_fast.train.tasks import resolve
from vlmo_fast.train.trainer import Trainer, TrainingStopped

GOLDEN = Path(__file__).resolve().parent.parent / "assets" / "golden_losses_tiny.json"


def golden_run(root, log_dir) -> list[float]:
    """Six deterministic steps of the tiny pre-training (drop path on, fp32), the curve stored in tests/assets."""
    return losses(run(root, log_dir, "max_train_steps=6", "seed=3", "precision=32"))


def test_golden_loss_curve(synthetic_root, tmp_path):
    expected = json.loads(GOLDEN.read_text())["losses"]
    torch.testing.assert_close(torch.tensor(golden_run(synthetic_root, tmp_path)), torch.tensor(expected),
                               rtol=1e-4, atol=1e-4)


def test_resume_continues_exactly(synthetic_root, tmp_path):
    """Stopping after 2 steps and resuming gives the uninterrupted curve bit for bit (CPU)."""
    full = losses(run(synthetic_root, tmp_path / "full", "max_train_steps=5", "checkpoint_every=2"))
    run(synthetic_root, tmp_path / "cut", "max_train_steps=2", "checkpoint_every=2")
    resumed = run(synthetic_root, tmp_path / "cut", "max_train_steps=5", "checkpoint_every=2", "resume=True")
    assert losses(resumed) == full  # the log holds the 2 steps before and the 3 after the resume


def test_resume_without_checkpoint_names_the_directory(synthetic_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "checkpoints")):
        run(synthetic_root, tmp_path, "max_train_steps=1", "resume=True")
    # resume=auto (for torchrun restarts) starts fresh without one, and continues from one when it exists
    assert [r["step"] for r in run(synthetic_root, tmp_path, "max_train_steps=1", "resume=auto")] == [1]
    assert [r["step"] for r in run(synthetic_root, tmp_path, "max_train_steps=2", "resume=auto")] == [1, 2]


def test_dali_decoder_trains(synthetic_root, tmp_path):
    """decoder=dali decodes the training batches with DALI (its CPU pipeline here; 'mixed' on CUDA)."""
    pytest.importorskip("nvidia.dali")
    log = run(synthetic_root, tmp_path, "max_train_steps=2", "decoder=dali")
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] > 0 for r in log)


def test_every_record_has_the_data_stall(synthetic_root, tmp_path):
    """log.jsonl and TensorBoard get the mean wait of a step for its batch and the stall fraction of the window."""
    log = run(synthetic_root, tmp_path, "max_train_steps=2")
    assert all(r["data_wait_s"] > 0 and 0 < r["stall_fraction"] < 1 for r in log)
    events = list((tmp_path / "tensorboard").glob("events.*"))
    assert events and b"stall_fraction" in events[0].read_bytes() and b"data_wait_s" in events[0].read_bytes()


def test_non_finite_losses_are_skipped_then_stop(synthetic_root, tmp_path):
    with pytest.raises(TrainingStopped, match="non-finite"):
        run(synthetic_root, tmp_path, "max_train_steps=20", "learning_rate=1e30", "warmup_steps=0", "nan_limit=2")


def test_readme_main_job_quick(tmp_path):
    """`vlmo-fast demo` end to end (a few steps): synthetic data, pre-training, retrieval, VQA, metrics.json."""
    assert main(["demo", str(tmp_path), "--quick"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"recalls/ir_r1", "recalls/tr_r1", "vqa/val/score", "vqa/val/majority_baseline"} <= set(metrics)
    assert main(["plot", str(tmp_path / "pretrain")]) == 0
    assert Image.open(tmp_path / "pretrain" / "loss.png").size == (900, 500)

    ckpt, images = tmp_path / "vqa" / "model", tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 60), (220, 40, 40)).save(images / "red.png")
    Image.new("RGB", (50, 50), (40, 180, 60)).save(images / "green.jpg")
    (images / "broken.jpg").write_bytes(b"not an image")
    assert main(["predict", "vqa", str(ckpt), "--image", str(images / "red.png"), "--question", "what colour?"]) == 0
    out = tmp_path / "feats.safetensors"
    assert main(["predict", "embed", str(tmp_path / "pretrain" / "model"), "--images", str(images),
                 "--out", str(out)]) == 0
    from safetensors.torch import load_file
    assert load_file(str(out))["features"].shape[0] == 2  # the broken file skipped
    assert main(["predict", "retrieve", str(tmp_path / "pretrain" / "model"), "--images", str(images),
                 "--text", "a red square"]) == 0


def test_bench_step_prints_one_json_line_per_impl(capsys):
    assert main(["bench", "step", "--dim", "32", "--depth", "2", "--heads", "2", "--vl-start", "1", "--image", "32",
                 "--batch", "4", "--steps", "1", "--warmup", "0", "--no-compile"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    default = "fp32" if autocast_dtype("auto", torch.device("cpu")) is None else "bf16"
    expected = [("vlmo_fast", default)] + ([("vlmo_fast_fp32", "fp32")] if default != "fp32" else []) + \
        [("official_style", "fp32")]  # fp32 against fp32 in the same run
    assert [(l["impl"], l["precision"]) for l in lines] == expected
    assert all(l["samples_per_s"] > 0 and l["step_s_median"] > 0 for l in lines)


def test_bench_data_prints_each_decoder_path(capsys):
    """`bench data`: images/s per path (PIL in the main process, DALI cpu fed by the loader and reading the shards)."""
    assert main(["bench", "data", "--images", "12", "--width", "80", "--height", "60", "--sizes", "32",
                 "--workers", "0", "--batch", "4", "--batches", "1"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    paths = [l["path"] for l in lines]
    assert paths[0] == "pil_w0" and all(l["images_per_s"] > 0 and l["image_size"] == 32 for l in lines)
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return
    assert paths[1:] == ["dali_cpu", "dali_reader_cpu"]


def test_cli_errors_are_clear(capsys):
    assert main(["train", "task_nope"]) == 2
    assert "unknown task or preset" in capsys.readouterr().err


def test_checkpoint_keys_are_checked(capsys):
    assert main(["train", "task_mlm_itm_itc_tiny", "checkpoint_on_error=ignore"]) == 2
    assert "checkpoint_on_error='ignore': expected one of stop, retry" in capsys.readouterr().err
    assert main(["train", "task_mlm_itm_itc_tiny", "verify_checkpoint=yes"]) == 2
    assert "verify_checkpoint='yes': expected True or False" in capsys.readouterr().err


def test_test_only_evaluates_a_checkpoint(synthetic_root, tmp_path):
    """test_only=True loads load_path as it is (no resizing, official semantics) and only evaluates."""
    run(synthetic_root, tmp_path / "train", "max_train_steps=1")
    config = resolve("task_finetune_irtr_tiny", TINY + [f"data_root={synthetic_root}", f"log_dir={tmp_path / 'eval'}",
                                                        f"load_path={tmp_path / 'train' / 'model'}", "test_only=True"])
    metrics = Trainer(config).fit()
    assert "recalls/ir_r1" in metrics and not (tmp_path / "eval" / "log.jsonl").exists()
