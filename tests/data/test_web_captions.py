"""SBU and GCC from the official raw layout (annot.json of DATA.md): captions matched to image files by file name,
as the official write_sbu.py / write_conceptual_caption.py do; today's caption-list command lines keep working."""
from __future__ import annotations

import argparse
import json

import pytest

from tests.data.helpers import corrupt_bytes, image_bytes, write
from vlmo_fast.data.convert import schemas
from vlmo_fast.data.convert.cli import add_convert_parser, run_convert
from vlmo_fast.data.arrow import SplitTable


def _layout(root, split: str, annot: str):
    """images_{split}/0000/0000000 ... (file names without extension, as the official download scripts write)."""
    for k in range(3):
        write(root / f"images_{split}" / "0000" / f"000000{k}", image_bytes(seed=k))
    write(root / f"images_{split}" / "0001" / "0001000", corrupt_bytes())
    write(root / f"images_{split}" / "0001" / "0001001", image_bytes(seed=9))  # no caption for it
    pairs = [[f"http://example.com/a/000000{k}", f"caption {k}"] for k in range(3)]
    pairs += [["images/0001/0001000", "corrupt"], ["x/0009999", "no image"], ["0000002", "caption 2 again"],
              ["not a pair"]]
    write(root / annot, json.dumps(pairs).encode())
    return root


def _convert(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_convert_parser(parser.add_subparsers(dest="command"))
    return run_convert(parser.parse_args(["convert", *argv, "--no-progress"]))


@pytest.mark.parametrize("dataset, split, annot, out_name", [
    ("sbu", "train", "annot.json", "sbu_0.arrow"),
    ("gcc", "val", "val_annot.json", "conceptual_caption_val_0.arrow"),
])
def test_official_layout(tmp_path, capsys, dataset, split, annot, out_name):
    root = _layout(tmp_path / "raw", split, annot)
    extra = ["--split", split] if dataset == "gcc" else []
    assert _convert([dataset, str(root), str(tmp_path / "out"), *extra]) == 0
    summary = capsys.readouterr().out
    assert "wrote 3 rows" in summary
    assert (tmp_path / "out" / out_name).is_file()
    table = SplitTable(tmp_path / "out", "sbu" if dataset == "sbu" else "gcc", split)
    assert table.table.schema.equals(schemas.CAPTION)
    # matched by file name; the later pair for 0000002 wins, as the official dict assignment does
    assert table.texts == [["caption 0"], ["caption 1"], ["caption 2 again"]]
    assert table.table.column("image_id").to_pylist() == ["0000000", "0000001", "0000002"]
    assert set(table.table.column("split").to_pylist()) == {split}
    for reason in ("corrupt image", "missing image", "image without caption", "bad pair"):
        assert reason in summary


def test_missing_annotations_name_the_file(tmp_path):
    (tmp_path / "raw" / "images_train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"raw/annot\.json not found"):
        _convert(["sbu", str(tmp_path / "raw"), str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        _convert(["gcc", str(tmp_path / "raw")])


def test_caption_list_command_line_still_works(tmp_path):
    write(tmp_path / "img" / "a.jpg", image_bytes(seed=1))
    write(tmp_path / "list.tsv", b"a red square\ta.jpg\n")
    assert _convert(["gcc", str(tmp_path / "list.tsv"), str(tmp_path / "img"), str(tmp_path / "out"),
                     "--split", "train", "--shard-rows", "10"]) == 0
    assert SplitTable(tmp_path / "out", "gcc", "train").texts == [["a red square"]]
