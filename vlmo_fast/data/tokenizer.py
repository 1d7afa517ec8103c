"""BERT uncased WordPiece tokenizer (the official `bert-base-uncased`, do_lower_case=True) from the shipped vocab.

The official code tokenizes with transformers' slow BertTokenizer; the ids here equal its ids on any text
(tests/data/test_tokenizer_reference.py).  ASCII texts without "[" take the `tokenizers` library's BERT pipeline,
which gives the same words there; every other text is split into words by the slow tokenizer's rules
(bert_words.py: literal special tokens kept whole, category C characters dropped, NFC, lower case, accents
stripped, punctuation split) and only its WordPiece runs in `tokenizers`.  The vocabulary is
vlmo_fast/data/vocab.txt (30522 entries); `[CLS] ... [SEP]` surround the text, and truncation keeps the first
`max_len - 2` word pieces, as `tokenizer(text, truncation=True, max_length=max_len)` does.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.processors import TemplateProcessing

from .bert_words import basic_words, split_special

VOCAB_PATH = Path(__file__).with_name("vocab.txt")
VOCAB_SIZE = 30522
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103
SPECIAL_IDS = (PAD_ID, CLS_ID, SEP_ID)


@dataclass
class Encoded:
    """A padded batch of token ids: `ids` and `masks` (B, max_len) int64, `lens` (B,) real lengths incl. CLS/SEP."""

    ids: torch.Tensor
    masks: torch.Tensor
    lens: torch.Tensor


class BertTokenizer:
    """WordPiece tokenizer giving the official padded ids: `[CLS] pieces [SEP] [PAD]*`."""

    def __init__(self, vocab_path: str | Path = VOCAB_PATH):
        vocab_path = Path(vocab_path)
        if not vocab_path.is_file():
            raise FileNotFoundError(f"BERT vocabulary not found: {vocab_path}")
        tokens = vocab_path.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        self.vocab = {tok: i for i, tok in enumerate(tokens)}
        self.id_to_token = tokens
        for name, want in (("[PAD]", PAD_ID), ("[UNK]", UNK_ID), ("[CLS]", CLS_ID), ("[SEP]", SEP_ID),
                           ("[MASK]", MASK_ID)):
            if self.vocab.get(name) != want:
                raise ValueError(f"{vocab_path}: {name} has id {self.vocab.get(name)}, expected {want}")
        tok = Tokenizer(WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None follows `lowercase`, as BertTokenizer(do_lower_case=True) strips accents.
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS_ID),
                                                                                         ("[SEP]", SEP_ID)])
        self._tok = tok
        # WordPiece alone, for words already split by the slow tokenizer's rules.
        self._wordpiece = Tokenizer(WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # Whole-word masking works on ids alone: a piece continues the previous word iff its token starts "##".
        self.is_continuation = torch.tensor([t.startswith("##") for t in tokens], dtype=torch.bool)

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of `text` without [CLS]/[SEP]."""
        return [self.id_to_token[i] for i in self._piece_ids([text])[0]]

    def _rule_ids(self, text: str) -> list[int]:
        """Ids of one text through the slow tokenizer's word rules (bert_words.py), then WordPiece."""
        ids: list[int] = []
        for k, piece in enumerate(split_special(text)):
            if k % 2:  # a literal special token: its own id, as in the slow tokenizer
                ids.append(self.vocab[piece])
            elif words := basic_words(piece):
                ids.extend(self._wordpiece.encode(words, is_pretokenized=True, add_special_tokens=False).ids)
        return ids

    def _piece_ids(self, texts: list[str]) -> list[list[int]]:
        """Word-piece ids per text, without [CLS]/[SEP]."""
        fast = [i for i, t in enumerate(texts) if t.isascii() and "[" not in t]
        out: list[list[int] | None] = [None] * len(texts)
        for i, enc in zip(fast, self._tok.encode_batch([texts[i] for i in fast], add_special_tokens=False)):
            out[i] = enc.ids
        return [ids if ids is not None else self._rule_ids(t) for ids, t in zip(out, texts)]

    def encode_ids(self, texts: list[str], max_len: int) -> list[list[int]]:
        """Unpadded ids `[CLS] ... [SEP]` per text, truncated to at most `max_len` ids."""
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (room for [CLS] and [SEP]), got {max_len}")
        return [[CLS_ID] + ids[: max_len - 2] + [SEP_ID] for ids in self._piece_ids(list(texts))]

    def encode(self, texts: list[str], max_len: int) -> Encoded:
        """Padded ids and attention masks (B, max_len).  Example: encode(["hello world"], 6).ids ->
        [[101, 7592, 2088, 102, 0, 0]]."""
        return pad_ids(self.encode_ids(texts, max_len), max_len)

    def word_starts(self, ids: torch.Tensor) -> torch.Tensor:
        """True where a token starts a word (not a `##` continuation); same shape as `ids`."""
        return ~self.is_continuation[ids]

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` with special tokens dropped and `##` pieces joined (for logs and predictions)."""
        return self._tok.decode([i for i in ids if i not in SPECIAL_IDS])


def pad_ids(seqs: list[list[int]], max_len: int) -> Encoded:
    """Pad id lists (each at most `max_len` long) with [PAD]=0 to (B, max_len)."""
    lens_np = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    if len(seqs) and int(lens_np.max()) > max_len:
        raise ValueError(f"a sequence of {int(lens_np.max())} ids exceeds max_len={max_len}")
    # One flat copy through numpy: per-row torch indexing costs ~100x more for a batch of a thousand.
    ids_np = np.full((len(seqs), max_len), PAD_ID, dtype=np.int64)
    valid = np.arange(max_len)[None, :] < lens_np[:, None]
    ids_np[valid] = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lens_np.sum()))
    ids, lens = torch.from_numpy(ids_np), torch.from_numpy(lens_np)
    masks = torch.from_numpy(valid.astype(np.int64))
    return Encoded(ids=ids, masks=masks, lens=lens)


@lru_cache(maxsize=None)
def get_tokenizer(vocab_path: str = str(VOCAB_PATH)) -> BertTokenizer:
    """The shared tokenizer instance (building it reads a 230 kB vocab; do it once per process)."""
    return BertTokenizer(vocab_path)
