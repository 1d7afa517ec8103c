"""The final table of benchmarks/gpu_check.sh: every step's outcome, then the op benchmarks and the train step.

    python benchmarks/gpu_summary.py OUT_DIR     (prints the table and writes OUT_DIR/summary.md)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _steps(out: Path) -> list[str]:
    rows = ["| step | result | seconds |", "|---|---|---|"]
    for line in (out / "steps.txt").read_text().splitlines():
        rows.append("| " + " | ".join(line.split("|")) + " |")
    return rows


def _ops(out: Path) -> list[str]:
    path = out / "bench_ops.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    rows = ["", "| benchmark | median (ms) | rate | device |", "|---|---|---|---|"]
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        rate = "; ".join(f"{v:.3g} {k}" for k, v in info.items() if "/s" in k and isinstance(v, (int, float)))
        median = b["stats"]["median"] * 1e3 if b.get("stats") else float("nan")
        rows.append(f"| {b['name']} | {median:.3f} | {rate or '-'} | {info.get('device', '-')} |")
    return rows


def _step(out: Path) -> list[str]:
    path = out / "bench_step.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")] if path.exists() else []
    if not records:
        return []
    keys = [k for k in ("impl", "samples_per_s", "step_s_median", "mfu", "device", "precision") if k in records[0]]
    rows = ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    rows += ["| " + " | ".join(str(r.get(k, "-")) for k in keys) + " |" for r in records]
    return rows


def main(out_dir: str) -> None:
    out = Path(out_dir)
    table = "\n".join(_steps(out) + _ops(out) + _step(out)) + "\n"
    (out / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main(sys.argv[1])
