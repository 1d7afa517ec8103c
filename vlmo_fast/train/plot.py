"""`vlmo-fast plot LOG_DIR`: the loss curves of log.jsonl as a PNG, drawn with Pillow (no plotting library)."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def read_log(log_dir: str | Path) -> list[dict]:
    path = Path(log_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not the log_dir of a vlmo-fast run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_log(log_dir: str | Path, width: int = 900, height: int = 500) -> Path:
    """Draw every *loss* series against the step to LOG_DIR/loss.png; returns the path."""
    records = read_log(log_dir)
    keys = sorted({k for r in records for k in r if "loss" in k})
    if not records or not keys:
        raise ValueError(f"{log_dir}/log.jsonl has no loss records yet")
    steps = [r["step"] for r in records]
    values = [v for r in records for k in keys if isinstance(v := r.get(k), (int, float))]
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1.0
    s0, s1 = min(steps), max(max(steps), min(steps) + 1)
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, top, right, bottom = 70, 20, width - 180, height - 50
    d.rectangle([left, top, right, bottom], outline="black")

    def xy(step, value):
        return (left + (step - s0) / (s1 - s0) * (right - left), bottom - (value - lo) / (hi - lo) * (bottom - top))

    for i in range(5):  # axis ticks
        v = lo + (hi - lo) * i / 4
        y = xy(s0, v)[1]
        d.line([left - 5, y, left, y], fill="black")
        d.text((5, y - 6), f"{v:.3g}", fill="black")
        s = s0 + (s1 - s0) * i / 4
        x = xy(s, lo)[0]
        d.line([x, bottom, x, bottom + 5], fill="black")
        d.text((x - 10, bottom + 8), f"{s:.0f}", fill="black")
    d.text(((left + right) // 2 - 15, height - 20), "step", fill="black")
    for i, k in enumerate(keys):
        pts = [xy(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float))]
        color = COLORS[i % len(COLORS)]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        elif pts:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=color)
        d.line([right + 15, top + 10 + 18 * i, right + 35, top + 10 + 18 * i], fill=color, width=3)
        d.text((right + 40, top + 4 + 18 * i), k, fill="black")
    path = Path(log_dir) / "loss.png"
    img.save(path)
    return path
