"""VQAv2 question/annotation JSONs + COCO images -> vqav2_{train,trainable_val,rest_val,test}.arrow.

Input layout (the official download): `{root}/v2_OpenEnded_mscoco_{train2014,val2014,test2015}_questions.json`,
`{root}/v2_mscoco_{train2014,val2014}_annotations.json` and images `{root}/{train2014,val2014,test2015}/
COCO_{subset}_{image_id:012d}.jpg`.  The test subset is optional.
The answer vocabulary = normalised `multiple_choice_answer`s of train+val occurring >= `min_answer_count` times
(official 9 -> 3129 answers); it is also written to `vqav2_answers.json` (label -> answer).  Train/val
questions without an in-vocabulary answer are dropped, and images left without questions.  The val images are
shuffled with `seed` and the last `rest_val_images` form rest_val (official: 1000, unseeded), the others
trainable_val.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from vlmo_fast.data.convert import schemas
from vlmo_fast.data.convert.common import clean_texts, progress, read_image
from vlmo_fast.data.convert.vqa_answers import answer_vocabulary, labels_and_scores
from vlmo_fast.data.convert.writer import ArrowWriter, ConvertReport

SUBSETS = {"train": "train2014", "val": "val2014", "test": "test2015"}


def _load(path: Path, key: str) -> list[dict]:
    try:
        return json.loads(path.read_text())[key]
    except FileNotFoundError:
        raise FileNotFoundError(f"VQAv2 file {path} not found") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected a JSON object with a {key!r} list ({e})") from e


def convert_vqa(root: str | Path, out_dir: str | Path, *, min_answer_count: int = 9, rest_val_images: int = 1000,
                seed: int = 0, progress_bar: bool = True) -> ConvertReport:
    """Write the VQAv2 arrow files.  Example: convert_vqa("vqav2/", "arrows/", min_answer_count=9)"""
    root = Path(root)
    questions = {s: _load(root / f"v2_OpenEnded_mscoco_{sub}_questions.json", "questions")
                 for s, sub in SUBSETS.items()
                 if s != "test" or (root / f"v2_OpenEnded_mscoco_{sub}_questions.json").is_file()}
    annotations = {s: _load(root / f"v2_mscoco_{SUBSETS[s]}_annotations.json", "annotations")
                   for s in ("train", "val")}
    vocab = answer_vocabulary((a["multiple_choice_answer"] for s in ("train", "val") for a in annotations[s]),
                              min_answer_count)
    ans2label = {a: i for i, a in enumerate(vocab)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "vqav2_answers.json").write_text(json.dumps(vocab))
    report = ConvertReport(name="convert vqa")
    by_image = {split: _questions_by_image(qs, annotations.get(split, []), split, ans2label, report)
                for split, qs in questions.items()}
    for split, name, image_ids in _file_plan(by_image, rest_val_images, seed):
        _write_file(root, out_dir, split, name, image_ids, by_image[split], vocab, report, progress_bar)
    return report


def _questions_by_image(questions: list[dict], annotations: list[dict], split: str, ans2label: dict[str, int],
                        report: ConvertReport) -> dict[int, list[dict]]:
    """The usable questions of a split by image id, with their answer labels and scores (test: none); questions
    that are empty, unannotated or whose answers are all outside the vocabulary are skipped (counted by reason)."""
    answers = {a["question_id"]: a for a in annotations}
    per_image: dict[int, list[dict]] = defaultdict(list)
    for q in questions:
        key = f"question {q.get('question_id')}"
        if not clean_texts([q.get("question", "")], key, report.skipped, what="question"):
            continue
        entry = {"question": q["question"].strip(), "question_id": int(q["question_id"]), "labels": [],
                 "scores": []}
        if split != "test":
            ann = answers.get(q["question_id"])
            if ann is None:
                report.skipped.skip("no annotation", key)
                continue
            entry["labels"], entry["scores"] = labels_and_scores([a["answer"] for a in ann["answers"]], ans2label)
            if not entry["labels"]:
                report.skipped.skip("no answer in vocabulary", key)
                continue
        per_image[int(q["image_id"])].append(entry)
    return per_image


def _file_plan(by_image: dict[str, dict[int, list[dict]]], rest_val_images: int,
               seed: int) -> list[tuple[str, str, list[int]]]:
    """(split, file name, image ids) of each file: train, val cut into trainable_val and rest_val (the last
    rest_val_images of a seeded shuffle), and test where its questions exist."""
    val_ids = sorted(by_image["val"])
    random.Random(seed).shuffle(val_ids)
    cut = max(0, len(val_ids) - rest_val_images)
    plan = [("train", "vqav2_train", sorted(by_image["train"])), ("val", "vqav2_trainable_val", val_ids[:cut]),
            ("val", "vqav2_rest_val", val_ids[cut:])]
    if "test" in by_image:
        plan.append(("test", "vqav2_test", sorted(by_image["test"])))
    return plan


def _write_file(root: Path, out_dir: str | Path, split: str, name: str, image_ids: list[int],
                per_image: dict[int, list[dict]], vocab: list[str], report: ConvertReport, progress_bar: bool) -> None:
    """One arrow file: a row per image with all its questions; unreadable images are skipped (counted)."""
    with ArrowWriter(out_dir, name, schemas.VQA) as writer:
        for iid in progress(image_ids, name, enabled=progress_bar):
            fname = f"COCO_{SUBSETS[split]}_{iid:012d}.jpg"
            data = read_image(root / SUBSETS[split] / fname, fname, report.skipped)
            if data is None:
                continue
            qs = per_image[iid]
            writer.write({"image": data, "questions": [q["question"] for q in qs],
                          "answers": [[vocab[label] for label in q["labels"]] for q in qs],
                          "answer_labels": [q["labels"] for q in qs], "answer_scores": [q["scores"] for q in qs],
                          "image_id": iid, "question_id": [q["question_id"] for q in qs], "split": split})
            report.rows += 1
            report.samples += len(qs)
    report.files += writer.files
