"""Arrow readers: missing files, shard families, the sample index, and corrupt images met at read time."""
import logging

import pytest

from tests.data.helpers import corrupt_bytes, image_bytes
from vlmo_fast.data.arrow import SplitTable, read_arrow
from vlmo_fast.data.collate import Collator
from vlmo_fast.data.convert import schemas
from vlmo_fast.data.convert.writer import ArrowWriter
from vlmo_fast.data.datasets import ArrowDataset, TextOnlyView, build_dataset
from vlmo_fast.data.registry import get_spec, resolve_files
from vlmo_fast.data.transforms import square_transform


def _caption_file(out, name, rows):
    with ArrowWriter(out, name, schemas.CAPTION, batch_rows=2) as w:
        for k, (data, caps) in enumerate(rows):
            w.write({"image": data, "caption": caps, "image_id": f"img{k}", "split": "test"})


def test_missing_arrow_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="coco_caption_karpathy_restval.arrow"):
        _caption_file(tmp_path, "coco_caption_karpathy_train", [(image_bytes(), ["x"])])
        SplitTable(tmp_path, "coco", "train")
    with pytest.raises(FileNotFoundError, match="sbu_0.arrow"):
        resolve_files(tmp_path, "sbu", "train")
    _caption_file(tmp_path, "sbu_0", [(image_bytes(), ["x"])])
    _caption_file(tmp_path, "sbu_2", [(image_bytes(), ["x"])])
    with pytest.raises(FileNotFoundError, match="sbu_1.arrow"):
        resolve_files(tmp_path, "sbu", "train")
    with pytest.raises(KeyError, match="unknown dataset"):
        get_spec("imagenet")
    with pytest.raises(KeyError, match="no split"):
        resolve_files(tmp_path, "vg", "dev")
    (tmp_path / "junk.arrow").write_bytes(b"nope")
    with pytest.raises(ValueError, match="junk.arrow"):
        read_arrow(tmp_path / "junk.arrow")


def test_index_mapping_and_image_only(tmp_path):
    _caption_file(tmp_path, "coco_caption_karpathy_test", [(image_bytes(seed=k), [f"c{k}{j}" for j in range(k + 1)])
                                                           for k in range(5)])
    t = SplitTable(tmp_path, "coco", "test")
    assert len(t) == 15 and t.rows.tolist()[:6] == [0, 1, 1, 2, 2, 2] and t.caps.tolist()[:6] == [0, 0, 1, 0, 1, 2]
    assert t.texts[int(t.rows[7])][int(t.caps[7])] == "c31"
    assert t.row_key(3) == "coco_caption_karpathy_test.arrow row 3 image_id=img3"
    img = SplitTable(tmp_path, "coco", "test", image_only=True)
    assert len(img) == 5 and img.rows.tolist() == list(range(5))
    texts = TextOnlyView(build_dataset(tmp_path, "coco", "test", image_size=8))
    assert len(texts) == 15 and texts[7]["text"] == "c31" and "image" not in texts[7]


def test_corrupt_image_at_read_time_is_skipped_counted_and_logged(tmp_path, caplog):
    _caption_file(tmp_path, "coco_caption_karpathy_val", [(image_bytes(), ["ok 0"]), (corrupt_bytes(), ["bad"]),
                                                          (image_bytes("CMYK"), ["ok 2"])])
    ds = ArrowDataset(tmp_path, "coco", "val", transform=square_transform(8))
    with caplog.at_level(logging.WARNING):
        s = ds[1]
    assert s["text"] == "ok 2" and ds.bad_images == 1
    assert "coco_caption_karpathy_val.arrow row 1 image_id=img1" in caplog.text


def test_dali_mode_keeps_bytes_and_collates_them(tmp_path):
    _caption_file(tmp_path, "coco_caption_karpathy_val", [(image_bytes(seed=k), [f"t{k}"]) for k in range(3)])
    ds = build_dataset(tmp_path, "coco", "val", decode="dali")
    samples = [ds[i] for i in range(3)]
    assert "image" not in samples[0] and isinstance(samples[0]["image_bytes"], bytes)
    batch = Collator(max_text_len=8)(samples)
    assert len(batch["image_bytes"]) == 3 and batch["text_ids"].shape == (3, 8)


def test_epoch_changes_augmentation_not_content(tmp_path):
    _caption_file(tmp_path, "coco_caption_karpathy_train", [(image_bytes(seed=1), ["a"])])
    _caption_file(tmp_path, "coco_caption_karpathy_restval", [(image_bytes(seed=2), ["b"])])
    ds = build_dataset(tmp_path, "coco", "train", image_size=16, seed=3)
    a0, a0b = ds[0]["image"], ds[0]["image"]
    ds.set_epoch(1)
    a1 = ds[0]["image"]
    assert (a0 == a0b).all() and not (a0 == a1).all()
