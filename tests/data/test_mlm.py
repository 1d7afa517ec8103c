"""MLM collators (spec 6.3): selection statistics, 80/10/10, whole-word grouping and budget, seeding."""
import pytest
import torch

from vlmo_fast.data.collate import Collator
from vlmo_fast.data.mlm import IGNORE_INDEX, MLMCollator, corrupt, special_mask, whole_word_mask
from vlmo_fast.data.tokenizer import MASK_ID, get_tokenizer


def _batch(n: int, lt: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(6, lt + 1, (n,), generator=g)
    ids = torch.zeros(n, lt, dtype=torch.long)
    for i, length in enumerate(lens.tolist()):
        ids[i, 0], ids[i, length - 1] = 101, 102
        ids[i, 1:length - 1] = torch.randint(1996, 29000, (length - 2,), generator=g)
    return ids


def test_token_level_statistics():
    ids = _batch(3000)
    out, labels = MLMCollator(whole_word=False)(ids, torch.Generator().manual_seed(0))
    sel = labels != IGNORE_INDEX
    eligible = ~special_mask(ids)
    assert not (sel & ~eligible).any(), "special tokens are never selected"
    rate = sel.sum() / eligible.sum()
    assert abs(rate - 0.15) < 0.005
    assert torch.equal(labels[sel], ids[sel]) and torch.equal(out[~sel], ids[~sel])
    masked = (out[sel] == MASK_ID).float().mean()
    unchanged = (out[sel] == ids[sel]).float().mean()
    assert abs(masked - 0.8) < 0.02
    assert abs(unchanged - 0.1) < 0.015  # 10 % kept (+ random ids that hit the original, ~0)
    assert abs(1 - masked - unchanged - 0.1) < 0.015


def test_random_replacements_are_uniform_over_vocab():
    ids = torch.full((4000, 40), 2000)
    sel = torch.ones_like(ids, dtype=torch.bool)
    out, _ = corrupt(ids, sel, torch.Generator().manual_seed(0))
    rand = out[(out != MASK_ID) & (out != 2000)]
    assert abs(rand.numel() / ids.numel() - 0.1) < 0.005
    assert rand.min() >= 0 and rand.max() < 30522
    assert abs(rand.float().mean() - 30521 / 2) < 300  # mean of a uniform over [0, 30522)


def test_whole_word_groups_and_budget():
    tok = get_tokenizer()
    # "unaffable" = una ##ffa ##ble: a word is masked entirely or not at all
    enc = tok.encode(["unaffable tokenization unaffable"] * 2000, 40)
    g = torch.Generator().manual_seed(0)
    sel = whole_word_mask(enc.ids, tok.is_continuation, 0.15, g)
    words = [(1, 4), (4, 6), (6, 9)]
    for a, b in words:
        part = sel[:, a:b]
        assert torch.equal(part.all(1), part.any(1)), "partial word masked"
    # budget = round(40 * 0.15) = 6 over 3 word groups + 30 PAD groups; PAD never ends up selected
    assert not sel[:, 9:].any() and not sel[:, 0].any()
    assert sel.sum(1).max() <= 6
    # each word is chosen with the same probability (about 6/33 for a one-token group, less for 3 tokens)
    freq = [sel[:, a].float().mean().item() for a, _ in words]
    assert 0.05 < freq[0] < 0.3 and abs(freq[0] - freq[2]) < 0.04


def test_whole_word_rate_on_full_sequences():
    tok = get_tokenizer()
    ids = _batch(2000)
    full = ids.clone()
    full[:, 1:39] = 2000  # no PAD: the budget of 6 is all spent on real tokens
    full[:, 39] = 102
    sel = whole_word_mask(full, tok.is_continuation, 0.15, torch.Generator().manual_seed(0))
    assert (sel.sum(1) == 6).all()
    short = whole_word_mask(ids, tok.is_continuation, 0.15, torch.Generator().manual_seed(0))
    assert short.sum(1).float().mean() < 6  # PAD competes for the budget (official behaviour)


def test_seeded_and_collator_determinism():
    ids = _batch(64)
    c = MLMCollator(whole_word=True, is_continuation=get_tokenizer().is_continuation)
    a = c(ids, torch.Generator().manual_seed(5))
    b = c(ids, torch.Generator().manual_seed(5))
    d = c(ids, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], d[1])
    with pytest.raises(ValueError, match="is_continuation"):
        MLMCollator(whole_word=True)


def test_collate_batch_dict():
    tok = get_tokenizer()
    samples = [{"text": t, "text_ids": tok.encode_ids([t], 12)[0], "sample_seed": i, "img_index": i,
                "cap_index": 0, "raw_index": i, "table_name": "x", "image": torch.zeros(3, 8, 8)}
               for i, t in enumerate(["a dog", "two cats on a mat with a hat and a bat"])]
    b = Collator(max_text_len=12, whole_word=True)(samples)
    assert b["text_ids"].shape == b["text_masks"].shape == b["text_ids_mlm"].shape == (2, 12)
    assert (b["text_labels"] == -100).all() and b["text_lens"].tolist() == [4, 12]
    assert isinstance(b["image"], list) and b["image"][0].shape == (2, 3, 8, 8)
    assert b["img_index"].tolist() == [0, 1] and b["table_name"] == ["x", "x"]
    again = Collator(max_text_len=12, whole_word=True)(samples)
    assert torch.equal(b["text_ids_mlm"], again["text_ids_mlm"])
