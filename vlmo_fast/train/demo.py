"""The quick-start job, the paper's pipeline in miniature: write the synthetic data, pre-train a tiny VLMo
(MLM + ITM + ITC), fine-tune it for image-text retrieval and for VQA, and evaluate both; on a CPU in minutes."""
from __future__ import annotations

import json
import time
from pathlib import Path

from vlmo_fast.data.convert.to_shards import arrow_to_shards
from vlmo_fast.data.synthetic import write_synthetic
from .tasks import resolve
from .trainer import Trainer


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, data_format: str = "arrow") -> int:
    """quick=True trains a few steps only (a smoke test of the whole path, not of the numbers); data_format="wds"
    trains from the synthetic data converted to tar shards."""
    out = Path(out_dir)
    data = out / "data"
    if not (data / "synthetic_caption_test.arrow").is_file():
        print(f"writing synthetic data to {data}")
        write_synthetic(data)
    if data_format == "wds":
        if not (out / "shards" / "synthetic_caption_test.shards.json").is_file():
            arrow_to_shards(data, out / "shards", max_samples=500, progress_bar=False)
        data = out / "shards"
    few = ["max_train_steps=3", "per_gpu_batchsize=8", "batch_size=8"] if quick else []
    few.append(f"data_format={data_format}")
    start = time.perf_counter()
    pre = Trainer(resolve("task_mlm_itm_itc_tiny", [f"data_root={data}", f"log_dir={out / 'pretrain'}"] + few))
    metrics = {f"pretrain/{k}": v for k, v in pre.fit().items()}
    pretrained = f"load_path={out / 'pretrain' / 'model'}"
    for task, name in (("task_finetune_irtr_tiny", "irtr"), ("task_finetune_vqa_tiny", "vqa")):
        metrics.update(Trainer(resolve(task, [f"data_root={data}", f"log_dir={out / name}", pretrained] + few)).fit())
    minutes = (time.perf_counter() - start) / 60
    records = [json.loads(line) for line in (out / "pretrain" / "log.jsonl").read_text().splitlines()]
    metrics["pretrain/stall_fraction"] = sum(r["stall_fraction"] for r in records) / len(records)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"\n== vlmo-fast demo ({minutes:.1f} min on {pre.device}) ==")
    print(f"retrieval on the 150 held-out test images: IR@1 {metrics['recalls/ir_r1']:.1%}  "
          f"TR@1 {metrics['recalls/tr_r1']:.1%}  (chance 0.7%; after pre-training alone "
          f"{metrics['pretrain/recalls/ir_r1']:.1%} / {metrics['pretrain/recalls/tr_r1']:.1%})")
    print(f"VQA: score {metrics['vqa/val/score']:.1%}  vs always answering the most frequent answer "
          f"{metrics['vqa/val/majority_baseline']:.1%}")
    print(f"data stall: {metrics['pretrain/stall_fraction']:.1%} of the pre-training step time ({data_format})")
    print(f"metrics: {out / 'metrics.json'}; loss curves: vlmo-fast plot {out / 'pretrain'}")
    return 0
