"""`vlmo-fast plot LOG_DIR`: the loss curves of log.jsonl as a PNG (matplotlib, the `plot` extra)."""
from __future__ import annotations

import json
from pathlib import Path

from vlmo_fast.errors import RunError


def read_log(log_dir: str | Path) -> list[dict]:
    path = Path(log_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not the log_dir of a vlmo-fast run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_log(log_dir: str | Path) -> Path:
    """Draw every *loss* series against the step to LOG_DIR/loss.png; returns the path."""
    records = read_log(log_dir)
    keys = sorted({k for r in records for k in r if "loss" in k})
    if not records or not keys:
        raise ValueError(f"{log_dir}/log.jsonl has no loss records yet")
    try:
        import matplotlib
    except ImportError as err:
        raise RunError("vlmo-fast plot needs matplotlib: pip install 'vlmo-fast[plot]'") from err
    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for key in keys:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    out = Path(log_dir) / "loss.png"
    fig.savefig(out, dpi=100)  # 900 x 500 pixels
    plt.close(fig)
    return out
