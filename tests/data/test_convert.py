"""Converters: raw layouts built here -> arrow files -> read back with the readers; every bad-data case."""
import argparse
import json
import logging

import pytest
import torch

from tests.data.helpers import corrupt_bytes, image_bytes, truncated_bytes, write
from vlmo_fast.data.arrow import SplitTable
from vlmo_fast.data.convert import add_convert_parser, run_convert, schemas
from vlmo_fast.data.convert.captions import convert_gcc, convert_sbu, convert_vg, convert_wikibk
from vlmo_fast.data.convert.karpathy import convert_karpathy
from vlmo_fast.data.convert.nlvr2 import convert_nlvr2
from vlmo_fast.data.convert.vqa import convert_vqa
from vlmo_fast.data.convert.vqa_answers import answer_score, normalize_answer
from vlmo_fast.data.datasets import build_dataset, pretrain_dataset
from vlmo_fast.data.retrieval import retrieval_split

LONG = " ".join(["word"] * 200)


def _coco(tmp_path):
    root = tmp_path / "coco"
    entries = [("a.jpg", "train2014", "train", ["a dog on grass", "  ", "a dog"], image_bytes("RGB")),
               ("b.jpg", "val2014", "val", ["a cmyk cat"], image_bytes("CMYK")),
               ("c.jpg", "val2014", "test", ["corrupt"], corrupt_bytes()),
               ("d.jpg", "val2014", "restval", ["truncated"], truncated_bytes()),
               ("e.png", "val2014", "test", ["a gray bird", LONG], image_bytes("L", fmt="PNG")),
               ("f.png", "val2014", "restval", ["an alpha fish", "an alpha fish"], image_bytes("RGBA", fmt="PNG")),
               ("g.jpg", "train2014", "train", ["missing file"], None),
               ("h.jpg", "train2014", "train", ["", ""], image_bytes("RGB"))]
    images = []
    for name, folder, split, caps, data in entries:
        if data is not None:
            write(root / folder / name, data)
        images.append({"filename": name, "filepath": folder, "split": split,
                       "sentences": [{"raw": c} for c in caps]})
    write(tmp_path / "dataset_coco.json", json.dumps({"images": images}).encode())
    return convert_karpathy(tmp_path / "dataset_coco.json", root, tmp_path / "out", dataset="coco",
                            progress_bar=False)


def test_karpathy_coco_round_trip_and_bad_data(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        report = _coco(tmp_path)
    out = tmp_path / "out"
    assert report.rows == 4 and report.samples == 2 + 1 + 2 + 2
    assert dict(report.skipped.counts) == {"empty caption": 3, "corrupt image": 2, "missing image": 1,
                                           "no caption": 1}
    assert "c.jpg" in caplog.text and "d.jpg" in caplog.text and "g.jpg" in caplog.text
    assert "c.jpg" in report.skipped.keys["corrupt image"][0]
    train = SplitTable(out, "coco", "train")
    assert [str(f.name) for f in train.files] == ["coco_caption_karpathy_train.arrow",
                                                  "coco_caption_karpathy_restval.arrow"]
    assert train.table.schema.equals(schemas.CAPTION)
    # duplicates removed in first-seen order, one sample per caption
    assert train.texts == [["a dog on grass", "a dog"], ["an alpha fish"]]
    assert len(train) == 3 and train.rows.tolist() == [0, 0, 1] and train.caps.tolist() == [0, 1, 0]
    ds = build_dataset(out, "coco", "test", image_size=16)
    s = ds[1]
    assert s["text"] == LONG and len(s["text_ids"]) == 40 and s["text_ids"][-1] == 102  # truncated
    assert s["image"].shape == (3, 16, 16) and s["img_index"] == 0 and s["table_name"] == "coco_caption_karpathy_test"
    val = build_dataset(out, "coco", "val", image_size=16)
    assert val[0]["image"].shape == (3, 16, 16)  # CMYK decoded to RGB
    assert torch.isfinite(build_dataset(out, "coco", "train", image_size=16)[2]["image"]).all()  # RGBA


def test_retrieval_split(tmp_path):
    _coco(tmp_path)
    r = retrieval_split(tmp_path / "out", "coco", "test", image_size=16, max_text_len=12)
    assert r.texts == ["a gray bird", LONG] and r.text_img_index.tolist() == [0, 0]
    assert r.text_ids.shape == (2, 12) and r.num_images == 1
    img = r.images[0]
    assert img["img_index"] == 0 and img["image"].shape == (3, 16, 16) and "text" not in img


def test_f30k_splits(tmp_path):
    images = []
    for k, split in enumerate(["train", "val", "test"]):
        write(tmp_path / "imgs" / f"{k}.jpg", image_bytes(seed=k))
        images.append({"filename": f"{k}.jpg", "split": split, "sentences": [{"raw": f"caption {k}"}]})
    write(tmp_path / "f.json", json.dumps({"images": images}).encode())
    convert_karpathy(tmp_path / "f.json", tmp_path / "imgs", tmp_path / "out", dataset="f30k", progress_bar=False)
    # official: F30K trains on train+val and evaluates on test
    assert SplitTable(tmp_path / "out", "f30k", "train").texts == [["caption 0"], ["caption 1"]]
    assert SplitTable(tmp_path / "out", "f30k", "val").texts == [["caption 2"]]


def _vqa_layout(tmp_path):
    root = tmp_path / "vqa"
    qs = {"train": [(1, 10, "What is it?"), (1, 11, "How many?"), (2, 20, "Color?"), (2, 21, "")],
          "val": [(3, 30, "Is it?"), (4, 40, "What sport?"), (5, 50, "Where?")],
          "test": [(6, 60, "Why?"), (7, 70, "Corrupt?")]}
    human = {10: ["dog"] * 4 + ["cat"] * 6, 11: ["2"] * 2 + ["two"] + ["3"] * 7, 20: ["red"] + ["zebra"] * 9,
             21: ["dog"] * 10, 30: ["yes"] * 10, 40: ["tennis"] * 3 + ["dog"] * 7, 50: ["cat"] * 10}
    major = {10: "cat", 11: "3", 20: "zebra", 21: "dog", 30: "yes", 40: "The Dog.", 50: "cat"}
    for split, sub in (("train", "train2014"), ("val", "val2014"), ("test", "test2015")):
        write(root / f"v2_OpenEnded_mscoco_{sub}_questions.json", json.dumps({"questions": [
            {"image_id": i, "question_id": q, "question": t} for i, q, t in qs[split]]}).encode())
        if split != "test":
            write(root / f"v2_mscoco_{sub}_annotations.json", json.dumps({"annotations": [
                {"image_id": i, "question_id": q, "multiple_choice_answer": major[q],
                 "answers": [{"answer": a} for a in human[q]]} for i, q, _ in qs[split] if q in human]}).encode())
        for i, _, _ in qs[split]:
            data = corrupt_bytes() if i == 7 else image_bytes(seed=i)
            write(root / sub / f"COCO_{sub}_{i:012d}.jpg", data)
    return root


def test_vqa_round_trip(tmp_path):
    report = convert_vqa(_vqa_layout(tmp_path), tmp_path / "out", min_answer_count=2, rest_val_images=1,
                         progress_bar=False)
    out = tmp_path / "out"
    vocab = json.loads((out / "vqav2_answers.json").read_text())
    assert vocab == ["cat", "dog"]  # normalised major answers occurring >= 2 times ("The Dog." -> "dog")
    # q11, q20, q30 have no in-vocabulary answer, q21 is empty: images 2 and 3 are left without questions
    assert report.skipped.counts == {"no answer in vocabulary": 3, "empty question": 1, "corrupt image": 1}
    assert "COCO_test2015_000000000007.jpg" in report.skipped.keys["corrupt image"][0]
    train = SplitTable(out, "vqa", "train")
    assert train.table.schema.equals(schemas.VQA)
    ds = build_dataset(out, "vqa", "train", image_size=16)
    by_q = {ds[i]["qid"]: ds[i] for i in range(len(ds))}
    assert by_q[10]["vqa_labels"] == [1, 0] and by_q[10]["vqa_scores"] == [1.0, 1.0]
    assert by_q[10]["vqa_answer"] == ["dog", "cat"]
    # val images 4 and 5 remain: one goes to trainable_val (part of train), the other is rest_val
    val = build_dataset(out, "vqa", "val", image_size=16)
    assert len(ds) == 2 and len(val) == 1 and {ds[1]["qid"], val[0]["qid"]} == {40, 50}
    q40 = by_q.get(40, val[0])
    assert q40["vqa_answer"] == ["dog"] and q40["vqa_scores"] == [1.0]  # 7 matches -> 1.0; "tennis" not in vocab
    test = build_dataset(out, "vqa", "test", image_size=16)
    assert len(test) == 1 and test[0]["qid"] == 60 and test[0]["vqa_labels"] == [] and test[0]["text"] == "Why?"


def test_vqa_answer_rules():
    assert [answer_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert normalize_answer("Two dogs.") == "2 dogs"
    assert normalize_answer("the Dont") == "don't"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("red/white") == "red white"


def test_nlvr2_round_trip(tmp_path):
    root = tmp_path / "nlvr2"
    lines = {"train": [("train-1-0-0", "two dogs", "True", 3), ("train-1-0-1", "no dogs", "False", 3),
                       ("train-2-0-0", "bad pair", "True", 4), ("train-3-0-0", " ", "True", 4)],
             "dev": [("dev-5-0-0", "a cat", "False", None)], "test1": [("test1-6-0-0", "a bird", "True", None)]}
    for split, rows in lines.items():
        write(root / f"{split}.json", "\n".join(json.dumps(
            {"identifier": i, "sentence": s, "label": lab, **({"directory": d} if d else {})})
            for i, s, lab, d in rows).encode())
        for ident, _, _, d in rows:
            pair = ident.rsplit("-", 1)[0]
            folder = root / "images" / "train" / str(d) if split == "train" else root / split
            write(folder / f"{pair}-img0.png", image_bytes("RGB", fmt="PNG"))
            write(folder / f"{pair}-img1.png", corrupt_bytes() if pair == "train-2-0" else image_bytes("L", fmt="PNG"))
    report = convert_nlvr2(root, tmp_path / "out", progress_bar=False)
    assert report.skipped.counts == {"corrupt image": 1, "empty caption": 1}
    assert "train-2-0-img1" in report.skipped.keys["corrupt image"][0]
    ds = build_dataset(tmp_path / "out", "nlvr2", "train", image_size=16)
    assert len(ds) == 2 and [ds[i]["answers"] for i in range(2)] == [1, 0]
    assert ds[0]["image_0"].shape == ds[0]["image_1"].shape == (3, 16, 16)
    val = build_dataset(tmp_path / "out", "nlvr2", "val", image_size=16)
    assert [val[i]["text"] for i in range(2)] == ["a cat", "a bird"]  # dev + test1


def test_vg_sbu_gcc_wikibk_and_pretrain_mixture(tmp_path):
    img = tmp_path / "img"
    write(img / "VG_100K" / "1.jpg", image_bytes(seed=1))
    write(img / "VG_100K_2" / "2.jpg", image_bytes(seed=2))
    regions = [{"id": 1, "regions": [{"phrase": "a tree", "x": 1, "y": 2, "width": 3, "height": 4},
                                     {"phrase": "", "x": 0, "y": 0, "width": 1, "height": 1}]},
               {"id": 2, "regions": [{"phrase": "sky", "x": 0, "y": 0, "width": 5, "height": 5}]},
               {"id": 3, "regions": [{"phrase": "no image", "x": 0, "y": 0, "width": 5, "height": 5}]}]
    write(tmp_path / "regions.json", json.dumps(regions).encode())
    vg = convert_vg(tmp_path / "regions.json", img, tmp_path / "out", progress_bar=False)
    assert vg.rows == 2 and vg.skipped.counts == {"empty caption": 1, "missing image": 1}
    t = SplitTable(tmp_path / "out", "vg", "train")
    assert t.table.schema.equals(schemas.VG) and t.value("x", 0) == [1] and t.texts == [["a tree"], ["sky"]]

    for k in range(5):
        write(img / "web" / f"{k}.jpg", image_bytes(seed=k))
    write(img / "web" / "bad.jpg", truncated_bytes())
    tsv = "\n".join([f"web caption {k}\tweb/{k}.jpg" for k in range(5)] + ["\tweb/0.jpg", "no tab here",
                                                                            "bad one\tweb/bad.jpg"])
    write(tmp_path / "list.tsv", tsv.encode())
    sbu = convert_sbu(tmp_path / "list.tsv", img, tmp_path / "out", shard_rows=2, progress_bar=False)
    assert [f.name for f in sbu.files] == ["sbu_0.arrow", "sbu_1.arrow", "sbu_2.arrow"]
    assert sbu.skipped.counts == {"empty caption": 1, "bad line": 1, "corrupt image": 1}
    gcc = convert_gcc(tmp_path / "list.tsv", img, tmp_path / "out", split="val", progress_bar=False)
    assert [f.name for f in gcc.files] == ["conceptual_caption_val_0.arrow"]
    assert SplitTable(tmp_path / "out", "sbu", "train").texts[4] == ["web caption 4"]

    write(tmp_path / "a.txt", b"first sentence.\n\nsecond sentence.\n")
    write(tmp_path / "b.txt", b"third.\n")
    wk = convert_wikibk([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "out", shard_rows=2,
                        progress_bar=False)
    assert wk.rows == 3 and wk.skipped.counts == {"empty line": 1}
    text = build_dataset(tmp_path / "out", "wikibk", "train")
    assert [text[i]["text"] for i in range(3)] == ["first sentence.", "second sentence.", "third."]
    assert "image" not in text[0] and text[0]["text_ids"][0] == 101

    convert_gcc(tmp_path / "list.tsv", img, tmp_path / "out", split="train", progress_bar=False)
    _coco(tmp_path)
    mix = pretrain_dataset(tmp_path / "out", "train", image_size=16)
    assert len(mix) == 3 + 2 + 5 + 5  # coco (train+restval texts), vg phrases, sbu, gcc


def test_cli_convert(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_convert_parser(parser.add_subparsers(dest="command"))
    write(tmp_path / "t.txt", b"hello.\n")
    args = parser.parse_args(["convert", "wikibk", str(tmp_path / "t.txt"), str(tmp_path / "o"), "--no-progress"])
    assert run_convert(args) == 0
    assert "wrote 1 rows" in capsys.readouterr().out
    assert (tmp_path / "o" / "wikibk_train_0.arrow").is_file()
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", "imagenet", "x"])
