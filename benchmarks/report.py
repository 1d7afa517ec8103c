"""Turn a pytest-benchmark JSON (pytest benchmarks --benchmark-json=FILE) into one markdown table per benchmark
file under benchmarks/results/<op>_<device>_<yyyymm>.md.

    python benchmarks/report.py FILE --device cpu-2core [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import datetime
import json
from collections import defaultdict
from pathlib import Path


def tables(data: dict) -> dict[str, list[str]]:
    by_op: dict[str, list[str]] = defaultdict(list)
    for b in data["benchmarks"]:
        op = Path(b["fullname"].split("::")[0]).stem.removeprefix("bench_")
        info = b.get("extra_info", {})
        rate = "; ".join(f"{v:.3g} {k}" for k, v in info.items() if "/s" in k and isinstance(v, (int, float)))
        by_op[op].append(f"| {b['name']} | {b['stats']['median'] * 1e3:.2f} | {rate} |")
    return by_op


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("json")
    p.add_argument("--device", required=True, help="short device name for the file names, e.g. h100 or cpu-2core")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()
    data = json.loads(Path(args.json).read_text())
    env = next((b.get("extra_info", {}) for b in data["benchmarks"]), {})
    stamp = datetime.date.fromisoformat(data["datetime"][:10]).strftime("%Y%m")
    for op, rows in tables(data).items():
        path = Path(args.out) / f"{op}_{args.device}_{stamp}.md"
        head = [f"# {op} on {env.get('device', args.device)} ({data['datetime'][:10]})", "",
                f"torch {env.get('torch')}, triton {env.get('triton')}; medians of pytest-benchmark rounds.", "",
                "| case | median (ms) | rate |", "|---|---|---|"]
        path.write_text("\n".join(head + rows) + "\n")
        print(path)


if __name__ == "__main__":
    main()
