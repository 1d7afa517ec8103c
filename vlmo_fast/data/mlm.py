"""Masked-language-model corruption (spec 6.3): token-level and whole-word, 80/10/10, seeded.

Both follow the official collators (transformers 4.8.1 DataCollatorForLanguageModeling and
DataCollatorForWholeWordMask) but draw every random number from an explicit torch.Generator, so a batch's
corruption is a pure function of its seed.

- token level: each non-special token (not CLS/SEP/PAD) is chosen with probability `prob`.
- whole word: word groups = a token and its following `##` pieces; CLS/SEP are skipped but PAD tokens are
  candidates (a PAD is its own one-token group); the groups are shuffled and taken in order while they fit the
  budget `max(1, round(padded_len * prob))` (a group that would overflow it is skipped, a later smaller one may
  still fit); special and PAD positions are then removed.  So the budget depends on the padded length and short
  captions get fewer masks than 15 % of the budget (official behaviour, spec 8.18).
Chosen positions: 80 % -> [MASK] (103), 10 % -> a random id uniform over the vocabulary, 10 % unchanged;
`labels` hold the original id there and -100 elsewhere.
"""
from __future__ import annotations

import torch

from vlmo_fast.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, VOCAB_SIZE

IGNORE_INDEX = -100


def special_mask(ids: torch.Tensor) -> torch.Tensor:
    """True at [CLS], [SEP] and [PAD]."""
    return (ids == CLS_ID) | (ids == SEP_ID) | (ids == PAD_ID)


def token_mask(ids: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli(prob) selection of the non-special tokens of `ids` (B, L) -> bool (B, L)."""
    probs = torch.full(ids.shape, prob)
    probs.masked_fill_(special_mask(ids), 0.0)
    return torch.bernoulli(probs, generator=generator).bool()


def whole_word_mask(ids: torch.Tensor, is_continuation: torch.Tensor, prob: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Whole-word selection (module docstring) of `ids` (B, L) -> bool (B, L).

    `is_continuation` (vocab,) bool marks `##` pieces (BertTokenizer.is_continuation).
    """
    B, L = ids.shape
    budget = max(1, round(L * prob))  # Python round, as the official code (round half to even)
    cont = is_continuation[ids].tolist()
    ids_list = ids.tolist()
    selected = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        groups: list[list[int]] = []
        for i, tok in enumerate(ids_list[b]):
            if tok == CLS_ID or tok == SEP_ID:
                continue
            if groups and cont[b][i]:
                groups[-1].append(i)
            else:
                groups.append([i])
        order = torch.randperm(len(groups), generator=generator).tolist()
        taken = 0
        for g in order:
            if taken >= budget:
                break
            if taken + len(groups[g]) > budget:
                continue
            selected[b, groups[g]] = True
            taken += len(groups[g])
    return selected & ~special_mask(ids)


def corrupt(ids: torch.Tensor, selected: torch.Tensor, generator: torch.Generator,
            vocab_size: int = VOCAB_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply 80 % [MASK] / 10 % random id / 10 % unchanged at `selected`; returns (ids_mlm, labels_mlm)."""
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    replace = torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool() & selected
    # Half of the remaining 20 % get a random id (the official draws 0.5 on what the 0.8 left).
    rand = torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool() & selected & ~replace
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, dtype=ids.dtype)
    out = ids.clone()
    out[replace] = MASK_ID
    out[rand] = random_ids[rand]
    return out, labels


class MLMCollator:
    """Callable giving (text_ids_mlm, text_labels_mlm) for padded ids (B, L).

    Example: MLMCollator(whole_word=True, is_continuation=tok.is_continuation)(ids, torch.Generator().manual_seed(0))
    """

    def __init__(self, *, whole_word: bool, is_continuation: torch.Tensor | None = None, prob: float = 0.15,
                 vocab_size: int = VOCAB_SIZE):
        if whole_word and is_continuation is None:
            raise ValueError("whole-word masking needs the tokenizer's is_continuation table")
        if not 0.0 < prob < 1.0:
            raise ValueError(f"mlm probability must be in (0, 1), got {prob}")
        self.whole_word = whole_word
        self.is_continuation = is_continuation
        self.prob = prob
        self.vocab_size = vocab_size

    def __call__(self, ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.whole_word:
            selected = whole_word_mask(ids, self.is_continuation, self.prob, generator)
        else:
            selected = token_mask(ids, self.prob, generator)
        return corrupt(ids, selected, generator, self.vocab_size)
