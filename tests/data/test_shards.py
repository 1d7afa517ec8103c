"""Tar shards: arrow -> shards through the CLI, read back by the webdataset library, by DALI's webdataset reader with
our index files, and by the readers (same tables and samples as from arrow)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.data.helpers import write
from vlmo_fast.cli import main
from vlmo_fast.data.arrow import SplitTable, read_arrow
from vlmo_fast.data.convert.to_shards import convert_as_shards
from vlmo_fast.data.datasets import build_dataset
from vlmo_fast.data.synthetic import write_synthetic


@pytest.fixture(scope="module")
def shard_root(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    assert main(["convert", "shards", str(synthetic_root), str(out), "--shard-samples", "64", "--no-progress"]) == 0
    return out


def test_every_table_has_shards_counts_and_index(synthetic_root, shard_root):
    for arrow in sorted(synthetic_root.glob("*.arrow")):
        shards = json.loads((shard_root / f"{arrow.stem}.shards.json").read_text())["shards"]
        assert shards and all(s["rows"] <= 64 for s in shards)
        assert sum(s["rows"] for s in shards) == read_arrow(arrow).num_rows
        assert all((shard_root / s["name"]).stat().st_size == s["bytes"] for s in shards)
        assert all((shard_root / s["name"].replace(".tar", ".idx")).read_text().startswith(f"v1.2 {s['rows']}\n")
                   for s in shards)
    assert (shard_root / "synthetic_vqa_answers.json").is_file()


def test_tables_and_samples_equal_arrow(synthetic_root, shard_root):
    for name, split in (("synthetic_caption", "train"), ("synthetic_vqa", "val"), ("synthetic_nlvr2", "val"),
                        ("synthetic_text", "val")):
        a, s = SplitTable(synthetic_root, name, split), SplitTable(shard_root, name, split)
        assert s.table.equals(a.table), name
        assert s.rows.tolist() == a.rows.tolist() and s.caps.tolist() == a.caps.tolist()
        assert list(s.table_names) == list(a.table_names)
        counted = sum(shard["samples"] for f in s.files for shard in json.loads(f.read_text())["shards"])
        assert counted == len(a), name
    x = build_dataset(synthetic_root, "synthetic_vqa", "train", image_size=32)[5]
    y = build_dataset(shard_root, "synthetic_vqa", "train", image_size=32)[5]
    assert torch.equal(x.pop("image"), y.pop("image")) and x == y


def test_webdataset_library_reads_the_shards(synthetic_root, shard_root):
    wds = pytest.importorskip("webdataset")
    manifest = json.loads((shard_root / "synthetic_nlvr2_dev.shards.json").read_text())
    urls = [str(shard_root / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    table = SplitTable(synthetic_root, "synthetic_nlvr2", "val")
    assert len(samples) == table.num_rows
    first = samples[0]
    assert first["__key__"] == "synthetic_nlvr2_dev-000000000"
    assert first["image_0.png"] == table.value("image_0", 0) and first["image_1.png"] == table.value("image_1", 0)
    assert json.loads(first["json"])["questions"] == table.value("questions", 0)


def test_dali_reads_the_shards_with_our_index_files(synthetic_root, shard_root):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    manifest = json.loads((shard_root / "synthetic_caption_val.shards.json").read_text())
    paths = [str(shard_root / s["name"]) for s in manifest["shards"]]

    @pipeline_def(batch_size=10, num_threads=1, device_id=None)
    def pipe():
        image, meta = fn.readers.webdataset(paths=paths, index_paths=[p.replace(".tar", ".idx") for p in paths],
                                            ext=["png;jpg", "json"], missing_component_behavior="error",
                                            random_shuffle=False, name="reader")
        return image, meta

    p = pipe()
    p.build()
    table = SplitTable(synthetic_root, "synthetic_caption", "val")
    assert p.epoch_size("reader") == table.num_rows
    images, metas = p.run()
    for k in range(10):
        assert np.array(images.at(k)).tobytes() == table.value("image", k)
        assert json.loads(np.array(metas.at(k)).tobytes())["caption"] == table.value("caption", k)


def test_converters_write_shards_with_format_wds(tmp_path, capsys):
    write(tmp_path / "t.txt", b"hello.\nworld.\n")
    assert main(["convert", "wikibk", str(tmp_path / "t.txt"), str(tmp_path / "o"), "--no-progress",
                 "--format", "wds"]) == 0
    assert "wrote 2 rows" in capsys.readouterr().out
    assert (tmp_path / "o" / "wikibk_train_0-000000.tar").is_file() and not list((tmp_path / "o").glob("*.arrow"))
    assert SplitTable(tmp_path / "o", "wikibk", "train").texts == [["hello."], ["world."]]
    # the synthetic data (small here; `convert synthetic OUT --format wds` writes the full size the same way)
    report = convert_as_shards(lambda out: write_synthetic(out, n_train=20, n_val=8, n_test=8, n_pairs_train=6,
                                                           n_pairs_dev=4, n_text_train=10, n_text_val=4,
                                                           progress_bar=False),
                               tmp_path / "syn", max_samples=8, progress_bar=False)
    assert report.rows == 20 + 8 + 8 + 20 + 8 + 6 + 4 + 10 + 4
    assert len(SplitTable(tmp_path / "syn", "synthetic_nlvr2", "train")) == 12
    assert [p.name for p in (tmp_path / "syn").iterdir() if p.name.startswith(".")] == []  # scratch removed


def test_index_files_equal_dalis_wds2idx(shard_root, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")  # installed with DALI
    shard = shard_root / "synthetic_nlvr2_dev-000000.tar"
    with wds2idx.IndexCreator(str(shard), str(tmp_path / "ref.idx"), verbose=False) as creator:
        creator.create_index()
    assert (tmp_path / "ref.idx").read_text() == shard.with_suffix(".idx").read_text()
