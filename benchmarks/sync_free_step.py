"""The compiled training step reads nothing back from the device: on CUDA, 3 steps (the batch moved from pinned
memory, the draws, forward, losses, backward) run under torch.cuda.set_sync_debug_mode("error") after one step
that compiles; on the CPU (gpu_check.sh --dry-run) the step compiles with fullgraph=True, the proxy.

    python benchmarks/sync_free_step.py [--preset vlmo_base_patch16] [--depth N] [--image 224] [--batch 32]

The batches share one bucketed shape, so one graph is compiled; --depth cuts the preset's layers to keep the
compilation inside the one-call GPU budget (device reads do not depend on the depth).
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from vlmo_fast.bench import PRETRAIN_OBJECTIVES, synthetic_batch
from vlmo_fast.config import preset
from vlmo_fast.model.vlmo import VLMo
from vlmo_fast.train.data import to_device
from vlmo_fast.train.layouts import LayoutPlanner
from vlmo_fast.train.runtime import autocast, autocast_dtype, graphs_compiled
from vlmo_fast.train.step_draws import draw_step
from vlmo_fast.train.trainer import StepModule


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="vlmo_base_patch16")
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--text-len", type=int, default=40)
    p.add_argument("--depth", type=int, default=None, help="layers (default: the preset's)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    depth = {} if args.depth is None else {"depth": args.depth, "vl_start": args.depth - 1}
    cfg = preset(args.preset, image_size=args.image, max_text_len=args.text_len, drop_path_rate=0.1,
                 tasks=tuple(sorted(PRETRAIN_OBJECTIVES)), **depth)
    torch.manual_seed(0)
    model = VLMo(cfg).to(device).train()
    step_module = StepModule(model, set(PRETRAIN_OBJECTIVES), gather_grad=True)
    step_module.compile(fullgraph=True, dynamic=False, backend="inductor" if device.type == "cuda" else "aot_eager")
    planner = LayoutPlanner(PRETRAIN_OBJECTIVES, cfg.num_image_tokens)
    pin = device.type == "cuda"
    batches = []
    for seed in range(4):
        b = synthetic_batch(cfg, args.batch, args.text_len, 0, "cpu")  # one shape: one compilation
        b.update(planner(b))
        batches.append({k: v.pin_memory() if pin and hasattr(v, "pin_memory") else v for k, v in b.items()})
    amp = autocast_dtype("auto", device)

    def step(host_batch: dict) -> None:
        batch = to_device(host_batch, device)
        draws = draw_step(model, batch["layouts"], PRETRAIN_OBJECTIVES, torch.Generator(device).manual_seed(0))
        with autocast(device, amp):
            losses, _ = step_module(batch, draws)
        sum(losses.values()).backward()

    step(batches[0])  # compiles (and autotunes): may read the device
    if device.type == "cuda":
        torch.cuda.synchronize()
    checked = contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        checked = contextlib.ExitStack()
        checked.callback(torch.cuda.set_sync_debug_mode, "default")
    with checked:
        for b in batches[1:]:
            step(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    mode = ("under set_sync_debug_mode('error')" if device.type == "cuda"
            else "(CPU: the fullgraph compile is the proxy)")
    print(f"3 compiled steps without a device read {mode}; graphs compiled: {graphs_compiled()}")


if __name__ == "__main__":
    main()
