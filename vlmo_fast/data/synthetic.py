"""Synthetic, learnable data in the ViLT schemas: coloured shapes at grid positions with matching texts.

An image (default 64 px, dark background) holds one or two objects, each a (size, colour, shape) in one of the
four quadrants; a large object spans about 80 % of its 32 px quadrant and a small one half, so both cover at
least a 16 px patch.  Captions name every object ("a large red circle at the top left and a small blue square at
the bottom right"), so a caption determines its image among a split: every combination is used at most once over
all caption splits (train/val/test are disjoint), and captions are unique within a split.  Written by
`write_synthetic` (CLI: `vlmo-fast convert synthetic OUT_DIR [--seed N] [--image-size S]`):
- synthetic_caption_{train,val,test}.arrow (COCO schema; 2 phrasings per image),
- synthetic_vqa_{train,val}.arrow (VQAv2 schema; colour, shape, position, count, size and yes/no questions with
  answers balanced so that no answer exceeds 50 %) and synthetic_vqa_answers.json (label -> answer),
- synthetic_nlvr2_{train,dev}.arrow (NLVR2 schema; per pair one true and one false statement),
- synthetic_text_{train,val}.arrow (WikiBK schema; captions of other combinations).
Deterministic for a seed: the same seed writes byte-identical files.
"""
from __future__ import annotations

import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlmo_fast.data.convert import schemas
from vlmo_fast.data.convert.common import progress
from vlmo_fast.data.convert.writer import ArrowWriter, ConvertReport

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (235, 215, 40),
          "purple": (150, 60, 200), "white": (240, 240, 240)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
VQA_ANSWERS = (list(COLORS) + list(SHAPES) + list(POSITIONS) + list(SIZES) + ["0", "1", "2", "yes", "no"])


@dataclass(frozen=True)
class Obj:
    size: str
    color: str
    shape: str
    pos: int  # index into POSITIONS

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape} at the {POSITIONS[self.pos]}"


Scene = tuple[Obj, ...]  # objects sorted by position


def all_scenes() -> list[Scene]:
    """Every scene of one or two objects at distinct positions (144 + 7776 = 7920)."""
    kinds = list(itertools.product(SIZES, COLORS, SHAPES))
    scenes: list[Scene] = [(Obj(*k, p),) for p in range(4) for k in kinds]
    for p, q in itertools.combinations(range(4), 2):
        scenes += [(Obj(*a, p), Obj(*b, q)) for a in kinds for b in kinds]
    return scenes


def captions(scene: Scene) -> list[str]:
    """Two phrasings: the objects in both orders (or 'there is ...' for one object)."""
    if len(scene) == 1:
        return [scene[0].phrase(), f"there is {scene[0].phrase()}"]
    a, b = scene
    return [f"{a.phrase()} and {b.phrase()}", f"{b.phrase()} and {a.phrase()}"]


def render(scene: Scene, size: int, rng: np.random.Generator) -> bytes:
    """PNG bytes of the scene at size x size, with small position, size and background jitter."""
    bg = int(rng.integers(20, 50))
    img = Image.new("RGB", (size, size), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    q = size / 2
    for o in scene:
        row, col = divmod(o.pos, 2)
        extent = q * (0.8 if o.size == "large" else 0.5) * rng.uniform(0.95, 1.05)
        cx = (col + 0.5) * q + rng.uniform(-0.06, 0.06) * q
        cy = (row + 0.5) * q + rng.uniform(-0.06, 0.06) * q
        h = extent / 2
        box = [cx - h, cy - h, cx + h, cy + h]
        color = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse(box, fill=color)
        elif o.shape == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _describe(o: Obj, scene: Scene) -> str:
    """The shortest of 'color shape' / 'size color shape' naming `o` uniquely in the scene."""
    if sum(p.color == o.color and p.shape == o.shape for p in scene) == 1:
        return f"{o.color} {o.shape}"
    return f"{o.size} {o.color} {o.shape}"


def questions(scene: Scene, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """`n` (question, answer) pairs of distinct types about the scene."""
    types = rng.permutation(6)[:n]
    out = []
    for t in types:
        o = scene[int(rng.integers(len(scene)))]
        where = POSITIONS[o.pos]
        if t == 0:
            out.append((f"what color is the shape at the {where}?", o.color))
        elif t == 1:
            out.append((f"what shape is at the {where}?", o.shape))
        elif t == 2:
            out.append((f"where is the {_describe(o, scene)}?", where))
        elif t == 3:
            present = [p.color for p in scene]
            # A present colour two times in three keeps the answers 0, 1 and 2 from being dominated by 0.
            color = o.color if rng.random() < 2 / 3 else str(rng.choice([c for c in COLORS if c not in present]))
            out.append((f"how many {color} shapes are there?", str(present.count(color))))
        elif t == 4:
            out.append((f"what size is the {o.shape} at the {where}?", o.size))
        else:
            if rng.random() < 0.5:
                out.append((f"is there a {o.color} {o.shape}?", "yes"))
            else:
                absent = [(c, s) for c in COLORS for s in SHAPES
                          if not any(p.color == c and p.shape == s for p in scene)]
                c, s = absent[int(rng.integers(len(absent)))]
                out.append((f"is there a {c} {s}?", "no"))
    return out


def _nlvr2_statement(left: Scene, right: Scene, want: bool, rng: np.random.Generator) -> str | None:
    """A statement about the pair whose truth is `want`, or None if the drawn template cannot give it."""
    t = int(rng.integers(4))
    has = lambda sc, c, s: any(o.color == c and o.shape == s for o in sc)  # noqa: E731
    if t in (0, 1):
        side, sc = ("left", left) if t == 0 else ("right", right)
        c, s = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
        if want:
            o = sc[int(rng.integers(len(sc)))]
            c, s = o.color, o.shape
        return f"the {side} image contains a {c} {s}" if has(sc, c, s) == want else None
    if t == 2:
        s = str(rng.choice(SHAPES))
        truth = any(o.shape == s for o in left) and any(o.shape == s for o in right)
        return f"both images contain a {s}" if truth == want else None
    if len(left) == len(right):
        return None
    return "the left image has more shapes than the right image" if (len(left) > len(right)) == want else None


def nlvr2_statements(left: Scene, right: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """One true and one false statement (the order drawn at random)."""
    out = []
    for want in (True, False):
        for _ in range(100):
            st = _nlvr2_statement(left, right, want, rng)
            if st is not None:
                out.append((st, str(want)))
                break
    if rng.random() < 0.5:
        out.reverse()
    return out


def write_synthetic(out_dir: str | Path, *, seed: int = 0, image_size: int = 64, n_train: int = 3000,
                    n_val: int = 150, n_test: int = 150, n_pairs_train: int = 2000, n_pairs_dev: int = 300,
                    n_text_train: int = 4000, n_text_val: int = 300, questions_per_image: int = 4,
                    progress_bar: bool = True) -> ConvertReport:
    """Write every synthetic file (module docstring) to `out_dir`.  Example: write_synthetic("data/", seed=0)"""
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 (shapes must cover a 16 px patch), got {image_size}")
    scenes = all_scenes()
    n_caption = n_train + n_val + n_test
    if n_caption > len(scenes) or not 1 <= questions_per_image <= 6:
        raise ValueError(f"at most {len(scenes)} caption images and 1..6 questions per image")
    rng = np.random.default_rng(seed)  # one stream, drawn from in the order below (the files depend on it)
    order = rng.permutation(len(scenes))
    split_scenes = {"test": [scenes[i] for i in order[:n_test]],
                    "val": [scenes[i] for i in order[n_test:n_test + n_val]],
                    "train": [scenes[i] for i in order[n_test + n_val:n_caption]]}
    report = ConvertReport(name="synthetic")
    out_dir = Path(out_dir)
    images = _write_captions(out_dir, split_scenes, image_size, rng, report, progress_bar)
    _write_vqa(out_dir, split_scenes, images, questions_per_image, rng, report)
    _write_nlvr2(out_dir, split_scenes, images, {"train": n_pairs_train, "dev": n_pairs_dev}, rng, report)
    text_scenes = [scenes[i] for i in order[n_caption:]] or scenes
    _write_text(out_dir, text_scenes, {"train": n_text_train, "val": n_text_val}, rng, report)
    return report


def _write_captions(out_dir: Path, split_scenes: dict[str, list], image_size: int, rng: np.random.Generator,
                    report: ConvertReport, progress_bar: bool) -> dict[str, list[bytes]]:
    """synthetic_caption_{train,val,test}: each scene rendered, with its captions; returns the encoded images."""
    images: dict[str, list[bytes]] = {}
    for split in ("train", "val", "test"):
        with ArrowWriter(out_dir, f"synthetic_caption_{split}", schemas.CAPTION) as w:
            images[split] = []
            for k, scene in enumerate(progress(split_scenes[split], f"synthetic {split}", enabled=progress_bar)):
                data = render(scene, image_size, rng)
                images[split].append(data)
                caps = captions(scene)
                w.write({"image": data, "caption": caps, "image_id": f"synthetic_{split}_{k}", "split": split})
                report.rows += 1
                report.samples += len(caps)
        report.files += w.files
    return images


def _write_vqa(out_dir: Path, split_scenes: dict[str, list], images: dict[str, list[bytes]],
               questions_per_image: int, rng: np.random.Generator, report: ConvertReport) -> None:
    """synthetic_vqa_{train,val} over the caption images, and the answer vocabulary (label -> answer)."""
    label = {a: i for i, a in enumerate(VQA_ANSWERS)}
    (out_dir / "synthetic_vqa_answers.json").write_text(json.dumps(VQA_ANSWERS))
    for split in ("train", "val"):
        with ArrowWriter(out_dir, f"synthetic_vqa_{split}", schemas.VQA) as w:
            for k, (scene, data) in enumerate(zip(split_scenes[split], images[split])):
                qa = questions(scene, questions_per_image, rng)
                w.write({"image": data, "questions": [q for q, _ in qa], "answers": [[a] for _, a in qa],
                         "answer_labels": [[label[a]] for _, a in qa], "answer_scores": [[1.0] for _ in qa],
                         "image_id": k, "question_id": [k * 10 + j for j in range(len(qa))], "split": split})
                report.rows += 1
                report.samples += len(qa)
        report.files += w.files


def _write_nlvr2(out_dir: Path, split_scenes: dict[str, list], images: dict[str, list[bytes]],
                 n_pairs: dict[str, int], rng: np.random.Generator, report: ConvertReport) -> None:
    """synthetic_nlvr2_train (pairs of train images) and _dev (pairs of val images), with statements on them."""
    for split, source in (("train", "train"), ("dev", "val")):
        pool = split_scenes[source]
        with ArrowWriter(out_dir, f"synthetic_nlvr2_{split}", schemas.NLVR2) as w:
            for k in range(n_pairs[split]):
                i, j = (int(x) for x in rng.choice(len(pool), 2, replace=False))
                st = nlvr2_statements(pool[i], pool[j], rng)
                w.write({"image_0": images[source][i], "image_1": images[source][j],
                         "questions": [s for s, _ in st], "answers": [a for _, a in st],
                         "identifier": f"synthetic-{split}-{k}"})
                report.rows += 1
                report.samples += len(st)
        report.files += w.files


def _write_text(out_dir: Path, text_scenes: list, n_texts: dict[str, int], rng: np.random.Generator,
                report: ConvertReport) -> None:
    """synthetic_text_{train,val}: captions of scenes no caption image shows (text-only MLM)."""
    for split in ("train", "val"):
        with ArrowWriter(out_dir, f"synthetic_text_{split}", schemas.TEXT) as w:
            for _ in range(n_texts[split]):
                scene = text_scenes[int(rng.integers(len(text_scenes)))]
                text = captions(scene)[int(rng.integers(2))]
                w.write({"image": "None", "caption": [text], "source": "synthetic", "split": split})
                report.rows += 1
                report.samples += 1
        report.files += w.files
