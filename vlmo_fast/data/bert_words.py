"""The word splitting of transformers' slow BertTokenizer (uncased), rule for rule, before WordPiece.

The official datasets tokenize with the slow BertTokenizer, whose rules live in Python and follow the running
Python's Unicode tables; the `tokenizers` library's BERT normaliser differs on some inputs (its own Unicode tables,
no NFC step, no special tokens in raw text).  In order:
1. the literal special tokens [PAD] [UNK] [CLS] [SEP] [MASK] (exact case) are cut out of the text and kept whole;
   the rest is lower-cased character by character (so a final capital sigma becomes σ, not ς);
2. each remaining piece: drop NUL, U+FFFD and every character of Unicode category C except tab, newline and
   return; other whitespace (tab, newline, return, category Zs) becomes a space;
3. a space on each side of every CJK ideograph; NFC; split on whitespace;
4. each word lower-cased, then NFD with the combining marks (category Mn) removed;
5. every punctuation character (ASCII symbols and category P) becomes a word of its own.
"""
from __future__ import annotations

import re
import unicodedata

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The five tokens never overlap, so an alternation finds the same leftmost matches as the slow tokenizer's trie.
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _clean(text: str) -> str:
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(" " if _is_whitespace(ch) else ch)
    return "".join(out)


def _split_punctuation(word: str) -> list[str]:
    pieces, current = [], []
    for ch in word:
        if _is_punctuation(ch):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(ch)
        else:
            current.append(ch)
    if current:
        pieces.append("".join(current))
    return pieces


def basic_words(text: str) -> list[str]:
    """Steps 2-5 for a text without special tokens: the words WordPiece sees."""
    words = []
    text = "".join(ch.lower() for ch in text)
    for word in unicodedata.normalize("NFC", _clean(text)).split():
        word = unicodedata.normalize("NFD", word.lower())
        word = "".join(ch for ch in word if unicodedata.category(ch) != "Mn")
        words.extend(_split_punctuation(word))
    return " ".join(words).split()  # the slow tokenizer's final whitespace split


def split_special(text: str) -> list[str]:
    """Step 1: the text cut around literal special tokens; the tokens are the odd-numbered items."""
    return _SPECIAL_SPLIT.split(text)
