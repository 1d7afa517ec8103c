"""Token ids equal those of transformers' slow BertTokenizer (uncased), the official tokenizer, on a corpus of prose,
accents, CJK, emoji, zero-width, control, private-use and unassigned code points, over-long words and literal
special tokens.  The reference ids were written once by tests/assets/make_tokenizer_reference.py (transformers 4.x);
this test needs no transformers."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from vlmo_fast.data.tokenizer import MASK_ID, get_tokenizer

REFERENCE = json.loads((Path(__file__).resolve().parents[1] / "assets" / "tokenizer_reference.json").read_text())


def test_reference_corpus_ids():
    rows = REFERENCE["texts"]
    assert len(rows) > 400
    got = get_tokenizer().encode_ids([r["text"] for r in rows], 512)
    wrong = [(r["text"], r["ids"], g) for r, g in zip(rows, got) if g != r["ids"]]
    assert not wrong, f"{len(wrong)} texts differ, first: {wrong[0]}"


def test_reference_truncation():
    tok = get_tokenizer()
    for r in REFERENCE["truncated"]:
        assert tok.encode_ids([r["text"]], r["max_len"])[0] == r["ids"], r["text"]


@pytest.mark.parametrize("text, ids", [
    ("a [MASK] dog", [101, 1037, 103, 3899, 102]),             # a literal special token is the token, as official
    ("a [mask] dog", [101, 1037, 1031, 7308, 1033, 3899, 102]),  # only in its exact case
    ("ΣΑΣ", [101, 1173, 14608, 29733, 102]),                    # lower-cased char by char: σ, never final ς
    ("zero\u200bwidth", [101, 5717, 9148, 11927, 2232, 102]),   # category Cf dropped, words joined
])
def test_rules_by_example(text, ids):
    assert get_tokenizer().encode_ids([text], 40)[0] == ids
    assert (MASK_ID in ids) == ("[MASK]" in text)


def test_ascii_fast_path_equals_the_word_rules():
    """ASCII texts without "[" go through the `tokenizers` pipeline; the slow tokenizer's rules give the same ids."""
    tok = get_tokenizer()
    rng = random.Random(0)
    texts = ["".join(chr(rng.randint(0, 127)) for _ in range(rng.randint(0, 30))).replace("[", "(")
             for _ in range(500)]
    texts += [r["text"] for r in REFERENCE["texts"] if r["text"].isascii() and "[" not in r["text"]]
    fast = tok.encode_ids(texts, 512)
    assert all(t.isascii() and "[" not in t for t in texts)
    assert fast == [[101] + tok._rule_ids(t) + [102] for t in texts]
