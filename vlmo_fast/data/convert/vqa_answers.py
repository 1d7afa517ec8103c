"""VQAv2 answer normalisation, vocabulary and soft scores (the rules of the official VQA evaluation and writer).

normalize_answer: punctuation is removed when it touches a space or sits in a number like "1,000", otherwise
replaced by a space; periods not followed by a digit are removed; lower case; number words zero..ten become
digits; the articles a/an/the are dropped; common contractions written without apostrophe get it back
("dont" -> "don't"); commas are removed.  (The official contraction table is longer; the entries below cover
the forms that occur among frequent answers.)
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")
_NUMBERS = {w: str(i) for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])}
_NUMBERS["none"] = "0"
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {c.replace("'", ""): c for c in [
    "ain't", "aren't", "can't", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't", "hasn't",
    "haven't", "he'd", "he'll", "he's", "how'd", "how'll", "how's", "i'd", "i'll", "i'm", "i've", "isn't",
    "it'd", "it'll", "let's", "ma'am", "mightn't", "mustn't", "needn't", "o'clock", "oughtn't", "shan't",
    "she'd", "she'll", "she's", "should've", "shouldn't", "that's", "there's", "they'd", "they'll", "they're",
    "they've", "wasn't", "we'd", "we'll", "we're", "we've", "weren't", "what'll", "what're", "what's", "what've",
    "when's", "where'd", "where's", "where've", "who'd", "who'll", "who's", "who've", "why'll", "why're", "why's",
    "won't", "would've", "wouldn't", "y'all", "you'd", "you'll", "you're", "you've"]}


def normalize_answer(text: str) -> str:
    """Normalise an answer string (module docstring).  Example: normalize_answer("Two dogs.") -> "2 dogs"."""
    out = text
    touches = _COMMA_NUMBER.search(text) is not None
    for p in _PUNCT:
        if touches or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = []
    for w in out.lower().split():
        w = _NUMBERS.get(w, w)
        if w not in _ARTICLES:
            words.append(_CONTRACTIONS.get(w, w))
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
