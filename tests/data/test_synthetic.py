"""Synthetic data: determinism, split sizes, caption uniqueness and disjointness, answer balance, loading."""
import collections
import hashlib
import io
import time

import numpy as np
import pytest
from PIL import Image

from vlmo_fast.data.arrow import SplitTable
from vlmo_fast.data.collate import Collator
from vlmo_fast.data.datasets import build_dataset
from vlmo_fast.data.synthetic import VQA_ANSWERS, all_scenes, write_synthetic


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    start = time.perf_counter()
    report = write_synthetic(out, seed=0, progress_bar=False)
    return out, report, time.perf_counter() - start


def test_written_fast_with_default_sizes(syn):
    out, report, seconds = syn
    assert seconds < 60
    names = sorted(p.name for p in out.glob("*.arrow"))
    assert names == sorted([f"synthetic_caption_{s}.arrow" for s in ("train", "val", "test")]
                           + [f"synthetic_vqa_{s}.arrow" for s in ("train", "val")]
                           + [f"synthetic_nlvr2_{s}.arrow" for s in ("train", "dev")]
                           + [f"synthetic_text_{s}.arrow" for s in ("train", "val")])
    assert report.skipped.total == 0


def test_caption_splits(syn):
    out, _, _ = syn
    splits = {s: SplitTable(out, "synthetic_caption", s) for s in ("train", "val", "test")}
    assert splits["train"].num_rows >= 2000 and splits["val"].num_rows >= 100 and splits["test"].num_rows >= 100
    seen = {}
    for s, t in splits.items():
        caps = [c for row in t.texts for c in row]
        assert len(caps) == len(set(caps)), f"duplicate caption in {s}"
        seen[s] = set(caps)
    assert not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    img = Image.open(io.BytesIO(splits["test"].value("image", 0)))
    assert img.size == (64, 64)


def test_vqa_answers_balanced(syn):
    out, _, _ = syn
    for split in ("train", "val"):
        t = SplitTable(out, "synthetic_vqa", split)
        answers = [a[0] for row in t.table.column("answers").to_pylist() for a in row]
        counts = collections.Counter(answers)
        assert max(counts.values()) / len(answers) < 0.5
        assert set(counts) <= set(VQA_ANSWERS) and len(counts) >= 15
        labels = [lab[0] for row in t.table.column("answer_labels").to_pylist() for lab in row]
        assert [VQA_ANSWERS[x] for x in labels] == answers


def test_nlvr2_and_text(syn):
    out, _, _ = syn
    ds = build_dataset(out, "synthetic_nlvr2", "train", image_size=32)
    answers = [ds.table.value("answers", r) for r in range(ds.table.num_rows)]
    flat = [a for row in answers for a in row]
    assert 0.45 < flat.count("True") / len(flat) < 0.55
    s = ds[0]
    assert s["image_0"].shape == (3, 32, 32) and s["answers"] in (0, 1)
    text = build_dataset(out, "synthetic_text", "train")
    batch = Collator(max_text_len=40, whole_word=True)([text[i] for i in range(8)])
    assert batch["text_ids"].shape == (8, 40) and "image" not in batch


def test_train_transform_keeps_positions(syn):
    out, _, _ = syn
    ds = build_dataset(out, "synthetic_caption", "train", image_size=64)
    assert type(ds.transform).__name__ == "SquareTransform"  # no flip/crop: "left" must stay left


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(n_train=40, n_val=10, n_test=10, n_pairs_train=10, n_pairs_dev=5, n_text_train=10, n_text_val=5,
              progress_bar=False)
    digests = []
    for k, seed in enumerate((7, 7, 8)):
        write_synthetic(tmp_path / str(k), seed=seed, image_size=48, **kw)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / str(k)).iterdir()})
    assert digests[0] == digests[1] and digests[0] != digests[2]
    with pytest.raises(ValueError, match="image_size"):
        write_synthetic(tmp_path / "x", image_size=16)


def test_shapes_are_large_enough():
    # the smallest object spans half a quadrant: 0.25 * 64 = 16 px, one patch
    assert len(all_scenes()) == 7920
    from vlmo_fast.data.synthetic import Obj, render
    img = np.asarray(Image.open(io.BytesIO(render((Obj("small", "red", "square", 0),), 64,
                                                  np.random.default_rng(0)))))
    red = (img[..., 0] > 150) & (img[..., 1] < 100)
    ys, xs = np.nonzero(red)
    assert xs.max() - xs.min() + 1 >= 14 and ys.max() < 32 and xs.max() < 32
