"""`vlmo-fast bench step` (`bench data`: vlmo_fast/bench_data.py; `bench tiles`: vlmo_fast/bench_tiles.py):
throughput of a full stage-3 training step (ITC + ITM with hard negatives + MLM, forward, backward, optimizer,
train mode) of vlmo-fast's default path against an in-project baseline that computes the way the official code
does: text padded to --text-len, fp32 attention logits with a materialised bias (the reference kernels), separate
passes through the official objectives, per-sample negative sampling, an AdamW that updates one tensor at a time
(each implementation keeps its own optimizer state over the shared weights).  Same weights, dims, batch and data
(real caption lengths uniform in 8..20 tokens with [CLS] and [SEP], fixed seed).

Prints one JSON line per implementation on stdout: {"impl", "samples_per_s", "step_s_median", "precision",
"compiled", "compiles"[, "mfu"]}.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time

import torch

from vlmo_fast.bench_tiles import add_tiles_bench_parser
from vlmo_fast.compat import VLMo as CompatVLMo
from vlmo_fast.compat import objectives as official
from vlmo_fast.config import ModelConfig, preset
from vlmo_fast.flops import device_peak, pretrain_step_flops
from vlmo_fast.train.optim import make_optimizer
from vlmo_fast.train.runtime import autocast_dtype, compile_mode, graphs_compiled
from vlmo_fast.train.data import to_device
from vlmo_fast.train.layouts import LayoutPlanner
from vlmo_fast.train.step import StepDraws, pretrain_losses
from vlmo_fast.train.step_draws import draw_step

PRETRAIN_OBJECTIVES = {"itc", "itm", "mlm"}


def synthetic_batch(cfg: ModelConfig, batch: int, text_len: int, seed: int, device) -> dict:
    """An official batch: captions of 8..20 real tokens padded to text_len, 15% of the tokens masked."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(8, 21, (batch,), generator=g).clamp(max=text_len)
    pos = torch.arange(text_len)[None]
    real = pos < lens[:, None]
    ids = torch.randint(1000, cfg.vocab_size, (batch, text_len), generator=g) * real
    ids[:, 0] = 101
    ids[torch.arange(batch), lens - 1] = 102
    pick = (torch.rand(batch, text_len, generator=g) < 0.15) & real & (pos > 0) & (pos < lens[:, None] - 1)
    pick[:, 1] |= ~pick.any(1)  # at least one supervised token per caption
    labels = torch.where(pick, ids, torch.full_like(ids, -100))
    b = {"text_ids": ids, "text_masks": real.long(), "text_labels": torch.full_like(ids, -100),
         "text_ids_mlm": torch.where(pick, torch.full_like(ids, 103), ids), "text_labels_mlm": labels,
         "text_lens": lens, "image": [torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1]}
    return {k: ([x.to(device) for x in v] if isinstance(v, list) else v.to(device)) for k, v in b.items()}


@contextlib.contextmanager
def kernels(choice: str):
    old = os.environ.get("VLMO_FAST_KERNELS")
    os.environ["VLMO_FAST_KERNELS"] = choice
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("VLMO_FAST_KERNELS")
        else:
            os.environ["VLMO_FAST_KERNELS"] = old


def official_style_losses(model, batch: dict) -> torch.Tensor:
    """The official computation: separate padded passes, per-sample multinomial draws with .item()."""
    itc = official.compute_itc(model, batch)
    with torch.no_grad():
        w_i2t = torch.softmax(itc["itc_i2t_logits"].float(), 1).fill_diagonal_(0)
        w_t2i = torch.softmax(itc["itc_t2i_logits"].float(), 1).fill_diagonal_(0)
        B = w_i2t.shape[0]
        neg_img = torch.tensor([torch.multinomial(w_t2i[b], 1).item() for b in range(B)])
        neg_txt = torch.tensor([torch.multinomial(w_i2t[b], 1).item() for b in range(B)])
    itm = official.compute_itm_hardneg(model, batch, itc["itc_i2t_logits"], itc["itc_t2i_logits"], neg_img, neg_txt)
    mlm = official.compute_mlm(model, batch)
    return itc["itc_loss"] + itm["itm_loss"] + mlm["mlm_loss"]


def baseline_optimizer(model) -> torch.optim.Optimizer:
    """The official code's optimizer: its transformers AdamW updates one parameter at a time (vlmo-fast's
    trainer optimizer is the fused one, make_optimizer); each implementation keeps its own state."""
    return torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01,
                             foreach=False)


def step_optimizers(model) -> dict[str, torch.optim.Optimizer]:
    """Each implementation's AdamW over the same parameters (benchmarks/bench_train_step.py)."""
    return {"vlmo_fast": make_optimizer(model, 1e-5, 0.01, 1.0), "official_style": baseline_optimizer(model)}


def measure(impls: dict, steps: int, warmup: int, device) -> dict[str, list[float]]:
    """Step times of every implementation, interleaved (one step of each in turn) so that both see the same
    machine conditions; warm-up steps (and compilation) are not timed."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for fn in impls.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(steps):
        for name, fn in impls.items():
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return times


def compiled_step(model: torch.nn.Module, batch: dict, gen: torch.Generator):
    """The trainer's compiled step (compile=True): the batch planned as the data loader plans it (bucketed
    layouts, once: the benchmark's batch never changes), the step's randomness drawn outside, forward and losses
    compiled as one full graph (the backward with them, by AOTAutograd).  Returns step() -> losses."""
    planned = {**batch, **LayoutPlanner(frozenset(PRETRAIN_OBJECTIVES), model.cfg.num_image_tokens)(
        {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})}
    planned = to_device(planned, batch["text_ids"].device)
    compiled = torch.compile(pretrain_losses, fullgraph=True, dynamic=False)

    def step():
        draws = draw_step(model, planned["layouts"], PRETRAIN_OBJECTIVES, gen)
        return compiled(model, planned, PRETRAIN_OBJECTIVES, draws=draws)[0]
    return step


def bench_model(args: argparse.Namespace, device: torch.device) -> CompatVLMo:
    """The model both implementations train (the drop-in module: the baseline calls the official objectives)."""
    if args.preset:
        cfg = preset(args.preset, image_size=args.image, max_text_len=args.text_len, drop_path_rate=0.1)
    else:
        cfg = ModelConfig(embed_dim=args.dim, depth=args.depth, num_heads=args.heads, vl_start=args.vl_start,
                          image_size=args.image, max_text_len=args.text_len, drop_path_rate=0.1)
    torch.manual_seed(args.seed)
    return CompatVLMo({"max_text_len": cfg.max_text_len, "image_size": cfg.image_size, "drop_path_rate": 0.1},
                      arch={"embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
                            "mlp_ratio": cfg.mlp_ratio, "vlffn_start_layer_index": cfg.vl_start,
                            "use_abs_pos_emb": cfg.abs_pos_emb, "need_relative_position_embed": cfg.rel_pos_bias,
                            "layer_scale_init_values": cfg.layer_scale}).to(device).train()


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def variants(args: argparse.Namespace, device: torch.device, precision: str) -> dict[str, tuple[bool, str]]:
    """vlmo-fast's measured variants, name -> (compiled, precision): the trainer's default path ("vlmo_fast"),
    the fp32 step beside a bf16 default on the CPU ("_fp32"), each compiled as the trainer's compile key decides
    (--compile / --no-compile, else auto), and with --compare-compile each in the other mode too ("_compiled" or
    "_eager")."""
    precisions = {"": precision}
    if precision != "fp32" and device.type == "cpu":  # fp32 against fp32 too, in the same run
        precisions["_fp32"] = "fp32"
    key = "auto" if args.compile is None else args.compile
    out = {}
    for suffix, p in precisions.items():
        compiled = compile_mode(key, device, AUTOCAST[p], fsdp=False) == "step"
        out[f"vlmo_fast{suffix}"] = (compiled, p)
        if args.compare_compile:
            out[f"vlmo_fast_{'eager' if compiled else 'compiled'}{suffix}"] = (not compiled, p)
    return out


def run_bench(args: argparse.Namespace) -> int:
    if args.what == "tiles":
        from vlmo_fast.bench_tiles import run_tiles_bench
        return run_tiles_bench(args)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    # the trainer's default precision (precision=auto) unless given; the official-style baseline computes in fp32
    # on the CPU (as the official code there) and in the same precision as ours on CUDA
    precision = args.precision or ("fp32" if autocast_dtype("auto", device) is None else "bf16")
    baseline_precision = precision if device.type == "cuda" else "fp32"
    model = bench_model(args, device)
    batch = synthetic_batch(model.cfg, args.batch, args.text_len, args.seed, device)
    gen = torch.Generator(device).manual_seed(args.seed)
    measured = variants(args, device, precision)
    losses_of = {False: lambda: pretrain_losses(model, batch, PRETRAIN_OBJECTIVES, draws=StepDraws(gen))[0]}
    if any(compiled for compiled, _ in measured.values()):
        losses_of[True] = compiled_step(model, batch, gen)
    flops = pretrain_step_flops(model.cfg, batch["text_lens"].tolist())
    peak = device_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None

    def autocast(name: str):
        amp = AUTOCAST[name]
        return torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()

    def ours(compiled: bool, name: str):
        forward, opt = losses_of[compiled], make_optimizer(model, 1e-5, 0.01, 1.0)  # its own optimizer state

        def step():
            with autocast(name):
                losses = forward()
            sum(losses.values()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def baseline(opt=baseline_optimizer(model)):
        with kernels("ref"), autocast(baseline_precision):
            loss = official_style_losses(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    impls = {name: (ours(*v), *v) for name, v in measured.items()}
    impls["official_style"] = (baseline, False, baseline_precision)
    chosen = {name: impls[name] for name in (args.impl or list(impls)) if name in impls}
    timed = measure({name: fn for name, (fn, _, _) in chosen.items()}, args.steps, args.warmup, device)
    for name, times in timed.items():
        med = statistics.median(times)
        rec = {"impl": name, "samples_per_s": args.batch / med, "step_s_median": med, "device": str(device),
               "precision": chosen[name][2], "compiled": chosen[name][1],
               "compiles": graphs_compiled()}  # graphs torch.compile built so far (its limit reached: eager again)
        if peak:
            rec["mfu"] = flops / med / peak
        print(json.dumps(rec), flush=True)
    return 0


def add_bench_parser(subparsers):
    """The `bench` parser and its subcommands' action (`bench data` is added beside `step` by the CLI)."""
    p = subparsers.add_parser("bench", help="benchmarks (see benchmarks/ for the per-op suite)")
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("step", help="train-step samples/s: vlmo-fast vs the official-style baseline")
    q.add_argument("--preset", default=None, help="a model preset (vlmo_base_patch16, ...) instead of the dims")
    q.add_argument("--dim", type=int, default=256)
    q.add_argument("--depth", type=int, default=6)
    q.add_argument("--heads", type=int, default=4)
    q.add_argument("--vl-start", type=int, default=4)
    q.add_argument("--image", type=int, default=128, help="image size in pixels")
    q.add_argument("--text-len", type=int, default=40, help="padded text length of the official batches")
    q.add_argument("--batch", type=int, default=16)
    q.add_argument("--steps", type=int, default=5)
    q.add_argument("--warmup", type=int, default=2)
    q.add_argument("--device", default="auto")
    q.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="vlmo-fast's precision; default the trainer's (bf16 on CUDA and on CPUs with bf16 matrix "
                        "units, else fp32); with bf16 on the CPU the fp32 step is measured too (vlmo_fast_fp32)")
    q.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile vlmo-fast's whole step (default: the trainer's compile=auto, CUDA and bf16)")
    q.add_argument("--compare-compile", action="store_true",
                   help="also measure vlmo-fast in the other compile mode (vlmo_fast_compiled* or vlmo_fast_eager*)")
    q.add_argument("--impl", action="append", help="run only these (vlmo_fast, official_style, vlmo_fast_fp32, ...)")
    q.add_argument("--seed", type=int, default=0)
    add_tiles_bench_parser(sub)
    return p, sub
