"""`vlmo-fast bench data`: images/s of each decoding path from tar shards, at several image sizes, beside the rate
at which a training step consumes them, so a user sees whether data or compute bounds a run.

Paths (each reads the same shards of COCO-like JPEGs, 640 x 480 by default, or the caption shards of --shards):
- pil_wK: the trainer's data_format=wds loader, PIL decode + the official training transform in K DataLoader
  workers (K = 0: in the main process);
- dali_cpu / dali_mixed: the same loader leaving images encoded, DALI decoding and augmenting them ahead of the
  consumer (decode_ahead, prefetch 2), on the CPU or with nvJPEG on the GPU;
- dali_reader_cpu / dali_reader_mixed: DALI reading the shards itself (fn.readers.webdataset with the index files),
  decoding, random-resized-cropping and normalising, prefetch 2;
- step (with --step-preset): samples/s of a stage-3 training step (ITC + ITM + MLM) of that preset at the size.
Prints one JSON line per (path, size): {"path", "image_size", "images_per_s", "batch", "device"}.
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmo_fast.data.convert import schemas
from vlmo_fast.data.dali import DaliDecoder, dali_available
from vlmo_fast.data.shards import ShardWriter
from vlmo_fast.data.wds import WdsSplit
from vlmo_fast.train.tasks import resolve

TABLE = "coco_caption_karpathy_train"


def write_jpeg_shards(out: Path, n: int, width: int, height: int, seed: int = 0) -> Path:
    """n COCO-like caption rows with smooth random JPEGs, as shards of 64 rows (what the bench reads)."""
    rng = np.random.default_rng(seed)
    with ShardWriter(out, TABLE, schemas.CAPTION, max_samples=64) as w:
        for k in range(n):
            base = np.linspace(0, 1, width)[None, :, None] * rng.uniform(40, 200, 3)
            noise = rng.normal(0, 12, (height, width, 3))
            buf = io.BytesIO()
            Image.fromarray((base + noise + 30).clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
            w.write({"image": buf.getvalue(), "caption": [f"image {k}"], "image_id": str(k), "split": "train"}, 1)
    return out


def _rate(batches, limit: int, count=lambda batch: len(batch["text"])) -> float:
    """Images/s over up to `limit` batches after the first (which pays the start-up)."""
    it = iter(batches)
    next(it)
    n, start = 0, time.perf_counter()
    for _, batch in zip(range(limit), it):
        n += count(batch)
    return n / max(time.perf_counter() - start, 1e-9)


def loader_rate(root: Path, size: int, batch: int, workers: int, limit: int, dali: DaliDecoder | None) -> float:
    last = len(list(root.glob(f"{TABLE}-*.tar"))) - 1
    pattern = root / f"{TABLE}-{{000000..{last:06d}}}.tar"  # the table's shards alone (no restval needed)
    cfg = resolve("task_mlm_itm_itc_base", [f"data_root={pattern}", "data_format=wds", "datasets=coco",
                                             f"image_size={size}", f"num_workers={workers}", "wds_shuffle_buffer=64"])
    split = WdsSplit(cfg, "train", decode="dali" if dali else "pil")
    data = split.loader(epoch=0, rank=0, world=1, batch_size=batch, unit=batch, workers=workers)
    return _rate(dali.decode_ahead(data) if dali else data, limit)


def reader_rate(root: Path, size: int, batch: int, limit: int, gpu: bool) -> float:
    """DALI reading the shards itself (fn.readers.webdataset), decode, random-resized crop, normalise."""
    from nvidia.dali import fn, pipeline_def, types

    paths = sorted(str(p) for p in root.glob(f"{TABLE}-*.tar"))

    @pipeline_def(batch_size=batch, num_threads=4, device_id=0 if gpu else None, prefetch_queue_depth=2)
    def pipe():
        jpeg = fn.readers.webdataset(paths=paths, index_paths=[p[:-4] + ".idx" for p in paths], ext=["jpg"],
                                     random_shuffle=True, initial_fill=64, name="reader")
        images = fn.decoders.image(jpeg, device="mixed" if gpu else "cpu", output_type=types.RGB)
        images = fn.random_resized_crop(images, size=(size, size), random_area=(0.5, 1.0))
        return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=[127.5] * 3,
                                        std=[127.5] * 3)

    p = pipe()
    p.build()
    return _rate(iter(p.run, None), limit, count=lambda outputs: len(outputs[0]))


def step_rate(preset_name: str, size: int, batch: int, device: torch.device) -> float:
    """Samples/s of a stage-3 training step of a preset (what the data must keep up with)."""
    from vlmo_fast.bench import PRETRAIN_OBJECTIVES, synthetic_batch
    from vlmo_fast.config import preset
    from vlmo_fast.model.vlmo import VLMo
    from vlmo_fast.train.optim import make_optimizer
    from vlmo_fast.train.step import StepDraws, pretrain_losses

    cfg = preset(preset_name, image_size=size, max_text_len=40)
    model = VLMo(cfg).to(device).train()
    opt = make_optimizer(model, 1e-4, 0.01, 1.0)
    data = synthetic_batch(cfg, batch, 40, 0, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times = []
    for k in range(5):
        start = time.perf_counter()
        with amp:
            draws = StepDraws(torch.Generator(device).manual_seed(k))
            losses, _ = pretrain_losses(model, data, PRETRAIN_OBJECTIVES, draws=draws)
        sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times[2:]))


def run_data_bench(args: argparse.Namespace) -> int:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.shards) if args.shards else write_jpeg_shards(Path(scratch), args.images, args.width,
                                                                      args.height)
        for size in args.sizes:
            rates = {f"pil_w{k}": (lambda k=k: loader_rate(root, size, args.batch, k, args.batches, None))
                     for k in args.workers}
            if dali_available():
                kinds = ["cpu"] + (["mixed"] if device.type == "cuda" else [])
                for kind in kinds:
                    dev = device if kind == "mixed" else torch.device("cpu")
                    rates[f"dali_{kind}"] = lambda dev=dev: loader_rate(
                        root, size, args.batch, 0, args.batches,
                        DaliDecoder(size, train=True, device=dev, batch_size=args.batch, num_threads=4))
                    rates[f"dali_reader_{kind}"] = lambda kind=kind: reader_rate(root, size, args.batch, args.batches,
                                                                                 kind == "mixed")
            if args.step_preset:
                rates["step"] = lambda: step_rate(args.step_preset, size, args.batch, device)
            for path, measure in rates.items():
                print(json.dumps({"path": path, "image_size": size, "images_per_s": round(measure(), 1),
                                  "batch": args.batch, "device": str(device)}), flush=True)
    return 0


def add_data_bench_parser(sub) -> argparse.ArgumentParser:
    q = sub.add_parser("data", help="images/s of each decoding path from tar shards (PIL workers, DALI cpu/mixed)")
    q.add_argument("--shards", default=None, help=f"a directory of {TABLE} shards (default: written to a temp dir)")
    q.add_argument("--images", type=int, default=512, help="images to write when --shards is not given")
    q.add_argument("--width", type=int, default=640)
    q.add_argument("--height", type=int, default=480)
    q.add_argument("--sizes", type=int, nargs="+", default=[224, 384, 480])
    q.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="PIL paths: DataLoader workers")
    q.add_argument("--batch", type=int, default=32)
    q.add_argument("--batches", type=int, default=8, help="batches timed per path (after one warm-up batch)")
    q.add_argument("--step-preset", default=None, help="also time a training step of this preset")
    q.add_argument("--device", default="auto")
    return q
