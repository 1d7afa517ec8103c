"""The VQA answer normaliser equals the official one (glossary.normalize_word) on every entry of the official
contraction, number and article tables and on answers chosen to exercise each rule; the converter's label
vocabulary and soft scores equal what the official write_vqa.py gives on a small raw VQAv2 layout.

Expected values are written out from the official rules, not computed by the code under test."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tests.data.helpers import image_bytes, write
from vlmo_fast.data.convert.vqa import convert_vqa
from vlmo_fast.data.convert.vqa_answers import normalize_answer
from vlmo_fast.data.convert.vqa_glossary import ARTICLES, CONTRACTIONS, NUMBERS

# Keys of the official table with capitals: answers are lower-cased before the lookup, so these never match.
CAPITALISED_KEYS = {"Id've": "id've", "I'dve": "i'dve", "Im": "im", "Ive": "ive"}


def test_contraction_table_is_the_official_one():
    assert len(CONTRACTIONS) == 120
    assert list(CONTRACTIONS)[:3] == ["aint", "arent", "cant"] and list(CONTRACTIONS)[-1] == "youve"
    assert CONTRACTIONS["somebody'd"] == "somebodyd" and CONTRACTIONS["let's"] == "let's"
    assert CONTRACTIONS["'ows'at"] == "'ow's'at" and CONTRACTIONS["twas"] == "'twas"
    assert not {"ill", "shed", "shell", "well", "were", "lets", "id", "its", "wed", "hell"} & set(CONTRACTIONS)


@pytest.mark.parametrize("key", list(CONTRACTIONS))
def test_every_contraction_entry(key):
    # Keys hold only letters and apostrophes: punctuation and period steps leave them, then the table applies.
    expected = CAPITALISED_KEYS.get(key, CONTRACTIONS[key])
    assert normalize_answer(key) == expected
    assert normalize_answer(f"  {key.upper()} ") == CONTRACTIONS.get(key.lower(), key.lower())


def test_every_number_and_article_entry():
    assert NUMBERS == {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                       "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
    for word, digit in NUMBERS.items():
        assert normalize_answer(word) == digit and normalize_answer(word.title() + " dogs") == f"{digit} dogs"
    assert normalize_answer("eleven") == "eleven"
    assert ARTICLES == ("a", "an", "the")
    for article in ARTICLES:
        assert normalize_answer(article) == "" and normalize_answer(f"{article.upper()} cat") == "cat"


OWN_ANSWERS = {
    # ordinary words that look like contractions without their apostrophe: unchanged
    "shed": "shed", "shell": "shell", "well": "well", "were": "were", "ill": "ill", "lets": "lets", "hell": "hell",
    "its": "its", "wed": "wed", "id": "id", "cant": "can't", "Dont": "don't", "yall": "y'all",
    # punctuation touching a space is removed, elsewhere replaced by a space
    "t - shirt": "t shirt", "black-and-white": "black and white", "red/white": "red white", "yes!": "yes",
    "(a) dog": "dog", "sign: stop": "sign: stop", "hot dog?": "hot dog", "what?no": "what no",
    # a digit-comma-digit anywhere removes every punctuation mark outright
    "1,000": "1000", "1,000 (approx)": "1000 approx", "2,5-3": "253",
    # periods: removed unless a digit follows; at most 32 of them (the official re.UNICODE in sub's count)
    "The Dog.": "dog", "3.5": "3.5", "mr. smith": "mr smith", "x" + "." * 33: "x.", "a.m.": "am",
    # commas that survive the punctuation step are dropped at the end
    "red,blue": "red blue", "red, blue": "red blue", "two, three": "2 3",
    "  Many   Spaces ": "many spaces", "A man's hat": "man's hat", "none of them": "0 of them",
}


@pytest.mark.parametrize("raw", list(OWN_ANSWERS))
def test_own_answers(raw):
    assert normalize_answer(raw) == OWN_ANSWERS[raw]


def _layout(root):
    """Raw VQAv2 files: (image, question, multiple_choice_answer, human answers) per split."""
    rows = {"train": [(1, 1, "shed", ["shed"] * 4 + ["shelter"] * 3 + ["she'd"] * 3),
                      (1, 2, "Shed", ["shed"] * 10),
                      (2, 3, "two", ["2"] * 2 + ["two"] * 8),
                      (2, 4, "2", ["2"] + ["3"] * 9)],
            "val": [(3, 5, "wont", ["won't"] * 3 + ["wont"] * 7),
                    (3, 6, "won't", ["won't"] + ["well"] * 2 + ["nope"] * 7),
                    (4, 7, "well", ["well"] * 10),
                    (4, 8, "The well.", ["the well"] * 5 + ["well"] * 5),
                    (4, 9, "nothing", ["nothing"] * 10)]}
    for split, sub in (("train", "train2014"), ("val", "val2014")):
        write(root / f"v2_OpenEnded_mscoco_{sub}_questions.json", json.dumps({"questions": [
            {"image_id": i, "question_id": q, "question": f"question {q}?"} for i, q, _, _ in rows[split]]}).encode())
        write(root / f"v2_mscoco_{sub}_annotations.json", json.dumps({"annotations": [
            {"image_id": i, "question_id": q, "multiple_choice_answer": m, "answers": [{"answer": a} for a in h]}
            for i, q, m, h in rows[split]]}).encode())
        for i in {r[0] for r in rows[split]}:
            write(root / sub / f"COCO_{sub}_{i:012d}.jpg", image_bytes(seed=i))
    return root


def test_converter_vocabulary_and_scores_equal_the_official_writer(tmp_path):
    convert_vqa(_layout(tmp_path / "raw"), tmp_path / "out", min_answer_count=2, rest_val_images=0,
                progress_bar=False)
    # Official: the normalised multiple_choice_answers counted, kept at >= 2 in first-seen order:
    # shed, shed, 2, 2, won't, won't, well, well, nothing -> ["shed", "2", "won't", "well"].
    assert json.loads((tmp_path / "out" / "vqav2_answers.json").read_text()) == ["shed", "2", "won't", "well"]
    got = {}
    for name in ("vqav2_train", "vqav2_trainable_val"):
        with pa.memory_map(str(tmp_path / "out" / f"{name}.arrow")) as f:
            table = pa.ipc.open_file(f).read_all().to_pylist()
        for row in table:
            for qid, labels, scores in zip(row["question_id"], row["answer_labels"], row["answer_scores"]):
                got[qid] = (labels, [round(s, 6) for s in scores])
    # Official: the raw human answers (not normalised) are counted and looked up; 1/2/3/4+ matches score
    # 0.3/0.6/0.9/1.0; question 9 has no answer in the vocabulary and is dropped.
    assert got == {1: ([0], [1.0]), 2: ([0], [1.0]), 3: ([1], [0.6]), 4: ([1], [0.3]),
                   5: ([2], [0.9]), 6: ([2, 3], [0.3, 0.6]), 7: ([3], [1.0]), 8: ([3], [1.0])}
