"""Tokenizer: official BERT uncased ids, padding, truncation, word starts."""
import hashlib

import pytest
import torch

from vlmo_fast.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, VOCAB_PATH, BertTokenizer, get_tokenizer


def test_vocab_is_bert_uncased():
    assert hashlib.sha256(VOCAB_PATH.read_bytes()).hexdigest() == (
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3")
    tok = get_tokenizer()
    assert tok.vocab_size == 30522
    assert [tok.id_to_token[i] for i in (PAD_ID, CLS_ID, SEP_ID, MASK_ID)] == ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.mark.parametrize("text, ids", [
    ("hello world", [101, 7592, 2088, 102]),
    ("A man riding a horse.", [101, 1037, 2158, 5559, 1037, 3586, 1012, 102]),
    ("Two DOGS playing", [101, 2048, 6077, 2652, 102]),
    ("café", [101, 7668, 102]),  # accents stripped with lower-casing, as do_lower_case=True does
])
def test_known_ids(text, ids):
    tok = get_tokenizer()
    assert tok.encode_ids([text], 40)[0] == ids
    # and each id is the vocab line of the expected piece
    assert tok.vocab["horse"] == 3586 and tok.vocab["riding"] == 5559


def test_padding_masks_and_truncation():
    tok = get_tokenizer()
    enc = tok.encode(["hello world", "a " * 100], 8)
    assert enc.ids.shape == (2, 8) and enc.ids.dtype == torch.long
    assert enc.ids[0].tolist() == [101, 7592, 2088, 102, 0, 0, 0, 0]
    assert enc.masks[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert enc.ids[1].tolist() == [101] + [1037] * 6 + [102]  # truncated, [SEP] kept last
    assert enc.lens.tolist() == [4, 8] and enc.masks[1].all()


def test_word_starts_mark_continuation_pieces():
    tok = get_tokenizer()
    pieces = tok.tokenize("unaffable tokenization")
    assert pieces == ["una", "##ffa", "##ble", "token", "##ization"]
    ids = tok.encode(["unaffable tokenization"], 10).ids
    assert tok.word_starts(ids)[0, :7].tolist() == [True, True, False, False, True, False, True]


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="max_len"):
        get_tokenizer().encode(["x"], 1)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        BertTokenizer(tmp_path / "missing.txt")
