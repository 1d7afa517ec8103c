"""Writes tokenizer_reference.json: texts and the ids transformers' slow BertTokenizer (uncased, the official
tokenizer) gives them.  Run once with `transformers<5` installed (5.x removed the slow tokenizers):

    python tests/assets/make_tokenizer_reference.py

The test (tests/data/test_tokenizer_reference.py) reads the JSON and needs no transformers."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HAND_WRITTEN = [
    "A man riding a horse on the beach.", "Two DOGS playing in the snow!!", "hello world",
    "What colour is the cat's collar?", "It's 3:45pm; the train (No. 7) left at 10,000 km/h...",
    "café naïve résumé Ångström façade jalapeño Zürich São Paulo", "ÉCOLE FRANÇAISE", "İstanbul ΟΔΟΣ Σίσυφος ΣΑΣ",
    "Straße groß ﬁne ﬂower Ǆ ǅ ǆ", "東京タワーと富士山", "我爱北京天安门。", "한국어 문장입니다", "ภาษาไทย", "العربية لغة جميلة",
    "עברית", "русский текст, Ёлка", "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵 keycap 1️⃣",
    "zero\u200bwidth\u200cnon\u200djoiner\u2060word\ufeffbom", "soft\u00adhyphen", "bidi \u202aLRE\u202c \u200eLRM\u200f",
    "control\x00null\x01\x02\x07bell\x1bescape\x7fdel", "tab\there\nnewline\rreturn\x0bvt\x0cff\x85nel",
    "line\u2028sep\u2029para", "nbsp\u00a0thin\u2009ideo\u3000space", "replacement \ufffd char",
    "private \ue000\uf8ff use \U000f0000", "unassigned \u0378\u0379 \U0001fffe \U000e0080 \ufdd0 noncharacter",
    "surrogate-free astral \U00010348 \U0001d11e \U00020000 \U0002a6d6", "combining e\u0301 a\u0300 n\u0303 o\u0308",
    "a" * 99, "b" * 100, "c" * 101, "supercalifragilisticexpialidocious" * 4, "x" + "\u0301" * 120,
    "[MASK]", "[CLS] a photo [SEP]", "a [MASK] on the [PAD] and [UNK] here", "[mask] [Mask] [ MASK ]",
    "x[MASK]y", "[MASK][MASK]", "##ing ##s", "[SEP]", "[unused0] [unused1]", "<s> </s> <pad> <mask>",
    "   leading and trailing   ", "", " ", "\n\t", "...", "---", "a.b.c", "e-mail@example.com http://x.org/a?b=c",
    "$1,000.50 €20 ¥300 £5 ½ ¾ ² ³ № ™ © ®", "math ∑∫√∞≠≤≥ ± × ÷", "quotes “smart” ‘single’ «guillemets» „low“",
    "dashes – — ― and ellipsis …", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "ﾊﾝｶｸ half-width katakana", "Ⅻ ⅻ ① ⑳",
    "don't won't shouldn't y'all o'clock", "U.S.A. Mr. Smith's", "3.14159 1e-5 -42 +7", "#hashtag @mention",
    "ALL CAPS SENTENCE WITH NUMBERS 123", "mixedCase camelCase snake_case kebab-case",
    "the quick brown fox jumps over the lazy dog " * 6,
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Random strings over code points of every plane block (assigned or not), mixed with ASCII words."""
    rng = random.Random(seed)
    ranges = [(0x20, 0x7e), (0x0, 0x1f), (0x80, 0x24f), (0x300, 0x36f), (0x370, 0x3ff), (0x400, 0x52f),
              (0x590, 0x6ff), (0x900, 0x97f), (0xe00, 0xe7f), (0x1100, 0x11ff), (0x2000, 0x206f), (0x2100, 0x22ff),
              (0x3000, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0xe000, 0xf8ff), (0xf900, 0xfaff),
              (0xfe00, 0xfe6f), (0xff00, 0xffff), (0x10000, 0x1ffff), (0x20000, 0x2fa1f), (0xe0000, 0xe01ef),
              (0xf0000, 0x10ffff)]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.4:
                parts.append(rng.choice(["the", "Cat", "[MASK]", "naïve", "1,000", " ", "\t", "-", "é"]))
            else:
                lo, hi = rng.choice(ranges)
                cp = rng.randint(lo, hi)
                if 0xd800 <= cp <= 0xdfff:
                    continue
                parts.append(chr(cp) * rng.randint(1, 3))
        out.append("".join(parts))
    return out


def main() -> None:
    from transformers import BertTokenizer

    root = Path(__file__).resolve().parents[2]
    tok = BertTokenizer(str(root / "vlmo_fast" / "data" / "vocab.txt"), do_lower_case=True)
    texts = HAND_WRITTEN + random_texts(400)
    rows = [{"text": t, "ids": tok(t, truncation=True, max_length=512)["input_ids"]} for t in texts]
    truncated = [{"text": t, "max_len": 12, "ids": tok(t, truncation=True, max_length=12)["input_ids"]}
                 for t in HAND_WRITTEN[:20]]
    import transformers

    out = {"transformers": transformers.__version__, "python": sys.version.split()[0],
           "note": "ids of transformers' slow BertTokenizer(vocab.txt, do_lower_case=True), "
                   "tokenizer(text, truncation=True, max_length=...)['input_ids']",
           "texts": rows, "truncated": truncated}
    path = Path(__file__).with_name("tokenizer_reference.json")
    path.write_text(json.dumps(out, ensure_ascii=True, indent=0))
    print(f"wrote {len(rows)} + {len(truncated)} rows to {path}")


if __name__ == "__main__":
    main()
