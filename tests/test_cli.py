"""`vlmo-fast train TASK ... --print-config` and `vlmo-fast tasks`; a bad value stops the run before any data is
read."""
from __future__ import annotations

from vlmo_fast.cli import main
from vlmo_fast.train.tasks import STEP_PRESETS, TASKS


def test_print_config_prints_the_resolved_keys_and_runs_nothing(tmp_path, capsys):
    log_dir = tmp_path / "run"
    assert main(["train", "task_finetune_vqa_tiny", "step3k", "per_gpu_batchsize=7", f"log_dir={log_dir}",
                 "--print-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {"# optim", "per_gpu_batchsize=7", "max_steps=3000", "loss_names.vqa=1", "lr_mult=10.0",
            f"log_dir={log_dir}"} <= set(lines)
    assert not log_dir.exists()


def test_a_bad_value_stops_before_the_data(tmp_path, capsys):
    """data_root does not exist: an error about the value (not a missing file) shows that nothing was read."""
    assert main(["train", "task_mlm_itm_itc_tiny", "per_gpu_batchsize=-3", f"data_root={tmp_path / 'none'}",
                 f"log_dir={tmp_path / 'run'}"]) == 2
    assert capsys.readouterr().err.strip() == "vlmo-fast: error: per_gpu_batchsize=-3: must be >= 1"
    assert main(["train", "task_mlm_itm_itc_tiny", "learning_rate=abc"]) == 2
    assert capsys.readouterr().err.strip() == "vlmo-fast: error: learning_rate='abc': expected a number"
    assert not (tmp_path / "run").exists()


def test_tasks_lists_every_task_and_preset_on_one_line(capsys):
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [*TASKS, *STEP_PRESETS]
    vqa = next(line for line in lines if line.startswith("task_finetune_vqa_base_image480 "))
    assert "vqa on vqa" in vqa and "vlmo_base_patch16 480px" in vqa and "lr 3e-05" in vqa
    assert next(line for line in lines if line.startswith("step3k ")).split()[1:] == [
        "preset", "max_epoch=100", "warmup_steps=300", "max_steps=3000"]
