"""VQAv2 answer normalisation, vocabulary and soft scores: the official writer's rules (write_vqa.py with
glossary.normalize_word), step for step.

normalize_answer, in the official order: each punctuation mark is removed when it touches a space or when the answer
holds a digit-comma-digit ("1,000"), otherwise replaced by a space; periods not followed by a digit are removed (at
most 32, as the official call does); lower case; split on whitespace; number words become digits; the articles
a/an/the are dropped; words of the official contraction table are replaced ("dont" -> "don't"); joined with single
spaces; commas removed.  The tables are in vqa_glossary.py.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from .vqa_glossary import ARTICLES, CONTRACTIONS, MAX_PERIODS_STRIPPED, NUMBERS, PUNCTUATION

_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")


def normalize_answer(text: str) -> str:
    """Normalise an answer string (module docstring).  Example: normalize_answer("Two dogs.") -> "2 dogs"."""
    out = text
    has_number_comma = _COMMA_NUMBER.search(text) is not None
    for p in PUNCTUATION:  # every test looks at the original text, as the official loop does
        if has_number_comma or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out, count=MAX_PERIODS_STRIPPED)
    words = [NUMBERS.get(w, w) for w in out.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words).replace(",", "")


def answer_vocabulary(major_answers: Iterable[str], min_count: int = 9) -> list[str]:
    """Normalised answers occurring at least `min_count` times, in order of first occurrence (label = position)."""
    counts = Counter(normalize_answer(a) for a in major_answers)
    return [a for a, n in counts.items() if n >= min_count]


def answer_score(matches: int) -> float:
    """Soft VQA score of an answer given by `matches` of the 10 annotators: 0.3, 0.6, 0.9, then 1.0."""
    return 0.0 if matches <= 0 else min(1.0, (0.3, 0.6, 0.9)[matches - 1] if matches <= 3 else 1.0)


def labels_and_scores(human_answers: Iterable[str], ans2label: dict[str, int]) -> tuple[list[int], list[float]]:
    """In-vocabulary labels and scores of one question from its human answers (first-seen order).

    As in the official writer, the raw human answers are matched against the normalised vocabulary.
    """
    counts = Counter(human_answers)
    labels, scores = [], []
    for ans, n in counts.items():
        if ans in ans2label:
            labels.append(ans2label[ans])
            scores.append(answer_score(n))
    return labels, scores
