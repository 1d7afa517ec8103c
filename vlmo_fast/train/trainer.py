"""The training loop: a readable top-to-bottom loop around the fused objectives (step.py), with gradient
accumulation to the task's global batch, the official schedule, mixed precision, DDP or FSDP2 through torchrun,
atomic checkpoints that resume exactly, and the final evaluation."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from vlmo_fast.checkpoint.durable import fsync_file, write_text_durably
from vlmo_fast.checkpoint.native import save_model
from vlmo_fast.flops import device_peak, step_flops
from vlmo_fast.model.vlmo import VLMo
from .build import build_model
from .checkpoint_policy import check_checkpoint_keys, on_save_failure
from .checkpointing import (load_training_state, rng_states, save_replicated_training_state,
                            save_sharded_training_state)
from vlmo_fast.data.dali import DaliDecoder, pick_decoder
from .data import answer_vocabulary, augments, build_split, epoch_loader, to_device
from .evaluate import evaluate
from .intact import has_checkpoint, resume_checkpoint
from .optim import make_optimizer, make_scheduler, warmup_steps_of
from .run_lock import hold_run_directory
from .sharding import STRATEGIES, average_gradients, full_state_dict, shard
from vlmo_fast.seeds import step_seed
from .step import StepDraws, task_losses

log = logging.getLogger(__name__)


def timed(batches, stall: dict):
    """Yield the batches, adding the time spent waiting for each to stall["wait"] (the data stall)."""
    it = None
    while True:
        start = time.perf_counter()
        it = iter(batches) if it is None else it  # starting the loader's workers is part of the first wait
        batch = next(it, None)
        stall["wait"] += time.perf_counter() - start
        if batch is None:
            return
        yield batch


class TrainingStopped(RuntimeError):
    """Raised when training cannot go on (too many non-finite losses)."""


class StepModule(nn.Module):
    """The model plus the run's objectives: forward(batch) -> (losses, metrics); what DDP wraps."""

    def __init__(self, model: nn.Module, tasks: set[str], gather_grad: bool):
        super().__init__()
        self.model, self.tasks, self.gather_grad = model, tasks, gather_grad

    def forward(self, batch: dict, draws: StepDraws | None = None):
        return task_losses(self.model, batch, self.tasks, self.gather_grad, draws)


def pick_device(config: dict) -> torch.device:
    if config["device"] != "auto":
        return torch.device(config["device"])
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_dtype(config: dict, device: torch.device) -> torch.dtype | None:
    """None = fp32; bf16 on CUDA by default.  The official precision=16 maps to fp16 with a gradient scaler."""
    p = str(config["precision"])
    if p == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[p]


def init_distributed(device: torch.device) -> tuple[int, int]:
    """torchrun sets WORLD_SIZE/RANK; NCCL on GPUs, gloo on the CPU.

    The group's keys live under the torchrun attempt: after an elastic restart the store can still hold the
    previous attempt's keys, and a new gloo group would read the dead workers' addresses from them."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                store=dist.PrefixStore(f"vlmo_fast/attempt_{attempt}", store))
        if device.type == "cuda":
            torch.cuda.set_device(device)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Example: Trainer(resolve("task_mlm_itm_itc_tiny", ["data_root=data", "log_dir=runs/x"])).fit()"""

    def __init__(self, config: dict):
        self.config = config = dict(config)
        if config["strategy"] not in STRATEGIES:
            raise ValueError(f"strategy={config['strategy']!r}: expected one of {', '.join(STRATEGIES)}")
        check_checkpoint_keys(config)
        self.device = pick_device(config)
        self.rank, self.world = init_distributed(self.device)
        torch.manual_seed(config["seed"] + self.rank)
        answers = answer_vocabulary(config)
        if answers is not None:
            config["vqav2_label_size"] = len(answers)
        self.answers = answers
        self.model = build_model(config, self.device)
        self.model.transformer.activation_checkpointing = bool(config["activation_checkpointing"])
        self.tasks = set(self.model.cfg.tasks)
        self.amp = autocast_dtype(config, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.log_dir = Path(config["log_dir"])
        self.step_module = StepModule(self.model, self.tasks, config["itc_gather_grad"])
        compile_on = config["compile"] is True or (config["compile"] == "auto" and self.device.type == "cuda")
        if compile_on:  # before wrapping, so FSDP gathers around the compiled blocks
            for blk in self.model.transformer.blocks:
                blk.compile(dynamic=True)
        self.fsdp = config["strategy"] == "fsdp" and self.world > 1 and not config["test_only"]  # eval: whole
        if config["strategy"] == "fsdp" and self.world == 1:
            log.warning("strategy=fsdp with a single process: nothing to shard, training unsharded")
        self.replicated: list[nn.Parameter] = []  # parameters FSDP leaves whole (gradients averaged by hand)
        self.ddp = self.step_module
        if self.fsdp:
            self.replicated = shard(self.step_module, self.model)
        elif self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        if self.world > 1:
            log.info("rank %d of %d, %s", self.rank, self.world, "FSDP2" if self.fsdp else "DDP")
        self.step = self.epoch = self.micro = self.skipped = 0
        self._stop_signal = None

    # ----------------------------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _is_main(self) -> bool:
        return self.rank == 0

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGTERM / Ctrl-C finish the current step, write a checkpoint and return (handlers restored after)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            self._stop_signal = signum
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _log(self, record: dict) -> None:
        if self._is_main():
            with open(self.log_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tb is not None:
                for k, v in record.items():
                    if k != "step" and isinstance(v, (int, float)):
                        self.tb.add_scalar(k, v, record["step"])

    @contextlib.contextmanager
    def _gradient_sync(self, on: bool):
        """Accumulation micro-steps keep their gradients local (no all-reduce / reduce-scatter until the last)."""
        if on or self.world == 1:
            yield
        elif self.fsdp:
            self.step_module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.step_module.set_requires_gradient_sync(True)
        else:
            with self.ddp.no_sync():
                yield

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (all ranks skip a step together, or DDP would hang)."""
        ok = torch.isfinite(loss.detach()).float()
        if self.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def _save(self, tag: str | None = None) -> None:
        """Durable, atomic checkpoint of everything needed to resume exactly (rank 0 writes; with FSDP every rank its
        shards); a failed save follows checkpoint_on_error (the "last" one, after which none follows, stops)."""
        position = dict(step=self.step, epoch=self.epoch, micro=self.micro, skipped=self.skipped)
        rng = rng_states()
        if self._is_main() and (self.log_dir / "log.jsonl").is_file():
            fsync_file(self.log_dir / "log.jsonl")  # the log on disk reaches at least the checkpoint's step
        save = save_sharded_training_state if self.fsdp else save_replicated_training_state
        with on_save_failure(self.config, final=tag == "last"):
            save(self.log_dir / "checkpoints", self.model, self.optimizer, self.scheduler, self.scaler, position, tag,
                 rng)

    # ----------------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train (or with test_only evaluate) holding the run directory's lock (one run per log_dir)."""
        with hold_run_directory(self.log_dir):
            return self._fit()

    def _fit(self) -> dict:
        cfg = self.config
        if cfg["test_only"]:
            return self.final_evaluation()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.tb = None
        if self._is_main():
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.log_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed: logging to log.jsonl only")
        B = int(cfg["per_gpu_batchsize"])
        self.decoder = pick_decoder(self.device, cfg["decoder"])
        dataset = build_split(cfg, "train", train=True, decode=self.decoder)
        self.dali = None
        if self.decoder == "dali":  # decodes (and augments) whole batches, on the GPU where there is one
            self.dali = DaliDecoder(int(cfg["image_size"]), train=augments(cfg), device=self.device, batch_size=B,
                                    seed=int(cfg["seed"]) + self.rank)
        accumulate = max(1, int(cfg["batch_size"]) // (B * self.world))
        per_epoch = (len(dataset) // self.world // B) // accumulate
        if per_epoch == 0:
            raise ValueError(f"{len(dataset)} training samples are fewer than one step of {B * accumulate * self.world}")
        total = int(cfg["max_steps"]) if cfg["max_steps"] else per_epoch * int(cfg["max_epoch"])
        stop = min(total, int(cfg["max_train_steps"])) if cfg["max_train_steps"] else total
        self.optimizer = make_optimizer(self.model, float(cfg["learning_rate"]), float(cfg["weight_decay"]),
                                        float(cfg["lr_mult"]))
        self.scheduler = make_scheduler(self.optimizer, warmup_steps_of(cfg["warmup_steps"], total), total)
        if cfg["resume"] not in (True, False, "auto"):
            raise ValueError(f"resume={cfg['resume']!r}: expected True, False or auto")
        has_ckpt = cfg["resume"] == "auto" and has_checkpoint(self.log_dir / "checkpoints")
        if cfg["resume"] is True or has_ckpt:
            ckpt = resume_checkpoint(self.log_dir / "checkpoints", cfg["verify_checkpoint"])
            state = load_training_state(ckpt, self.model, self.optimizer, self.scheduler, self.scaler, self.device)
            self.step, self.epoch, self.micro, self.skipped = (state[k] for k in ("step", "epoch", "micro", "skipped"))
            log.info("resumed from %s at step %d", ckpt, self.step)
        with self._stop_on_signals():
            self._train(dataset, B, accumulate, stop)
        if self._stop_signal is not None:
            log.warning("stopped by signal %d at step %d; resume with resume=True", self._stop_signal, self.step)
            print(f"stopped at step {self.step}; resume with resume=True", flush=True)
            return {}
        if self.fsdp:
            self._unshard()
        if self._is_main():
            save_model(self.model, self.log_dir / "model", {"vqa_answers": self.answers, "official_config": {
                k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool, list, dict, type(None)))}})
        return self.final_evaluation()

    def _unshard(self) -> None:
        """After FSDP training: every rank swaps its shards for a whole, plain copy of the model (evaluation and the
        exported model run unsharded, exactly as after a single-process run)."""
        state = full_state_dict(self.model)
        cfg = self.model.cfg
        self.ddp = self.step_module = self.optimizer = None  # frees the shards and the optimizer state
        self.model = VLMo(cfg).to(self.device)
        self.model.load_state_dict(state, strict=True)

    def _train(self, dataset, B: int, accumulate: int, stop: int) -> None:
        """The loop over optimizer steps until `stop` (or a stop signal); ends with the "last" checkpoint."""
        cfg = self.config
        self.model.train()
        bar = tqdm(total=stop, initial=self.step, disable=not self._is_main(), desc=cfg["exp_name"], unit="step")
        samples, flops, t0, window_loss = 0, 0.0, time.perf_counter(), []
        stall = {"wait": 0.0, "steps": 0}  # time the steps of the log window waited for their batches
        peak = device_peak(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None
        while self.step < stop and self._stop_signal is None:
            data = epoch_loader(dataset, cfg, B, accumulate, self.epoch, self.micro, self.rank, self.world,
                                self.device, self.dali)
            bad = False
            for batch in timed(data, stall):
                ready = time.perf_counter()
                step_work = step_flops(self.model.cfg, self.tasks, batch["text_lens"].tolist())  # host-side lengths
                batch = to_device(batch, self.device)
                stall["wait"] += time.perf_counter() - ready
                boundary = (self.micro + 1) % accumulate == 0
                draws = StepDraws(torch.Generator(self.device).manual_seed(
                    step_seed(int(cfg["seed"]), self.step * accumulate + self.micro, self.rank, self.world)))
                with self._gradient_sync(boundary):
                    with self._autocast():
                        losses, metrics = self.ddp(batch, draws)
                    loss = sum(losses.values())
                    if not self._all_finite(loss):
                        bad = True
                    else:
                        self.scaler.scale(loss / accumulate).backward()
                self.micro += 1
                samples += B * self.world
                flops += step_work * self.world
                window_loss.append(loss.detach())
                if not boundary:
                    continue
                if bad:  # a non-finite loss in this window: skip the update, count it
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skipped += 1
                    bad = False
                    log.warning("non-finite loss at step %d: update skipped (%d so far)", self.step, self.skipped)
                    if self.skipped >= int(cfg["nan_limit"]):
                        raise TrainingStopped(f"{self.skipped} steps had a non-finite loss (limit nan_limit="
                                              f"{cfg['nan_limit']}); last losses: "
                                              f"{ {k: float(v) for k, v in losses.items()} }")
                else:
                    average_gradients(self.replicated)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.step()
                self.step += 1
                stall["steps"] += 1
                bar.update(1)
                if self.step % int(cfg["log_every"]) == 0 or self.step == stop:
                    dt = time.perf_counter() - t0
                    mean_loss = torch.stack(window_loss).float().mean().item()
                    record = {"step": self.step, "epoch": self.epoch, "loss": mean_loss,
                              "lr": self.scheduler.get_last_lr()[0], "samples_per_s": samples / dt,
                              "tflops_per_s": flops / dt / 1e12, **({"mfu": flops / dt / peak} if peak else {}),
                              "data_wait_s": stall["wait"] / stall["steps"], "stall_fraction": stall["wait"] / dt,
                              **{k: v.item() for k, v in losses.items()}, **{k: v.item() for k, v in metrics.items()}}
                    self._log(record)
                    bar.set_postfix(loss=f"{mean_loss:.3f}", samples_s=f"{samples / dt:.1f}")
                    samples, flops, t0, window_loss = 0, 0.0, time.perf_counter(), []
                    stall.update(wait=0.0, steps=0)
                every = int(cfg["checkpoint_every"])
                if every and self.step % every == 0:
                    self._save()
                if self.step >= stop or self._stop_signal is not None:
                    break
            else:
                self.epoch, self.micro = self.epoch + 1, 0
                if not int(cfg["checkpoint_every"]) and self.step < stop:
                    self._save()
        bar.close()
        if self.tb is not None:
            self.tb.close()
        self._save("last")

    def final_evaluation(self) -> dict:
        """Evaluate the task's metrics; write log_dir/metrics.json (rank 0) and return them."""
        self.model.eval()
        with self._autocast():
            metrics = evaluate(self.model, self.config, self.device, self.answers, self.log_dir)
        if self._is_main():
            self.log_dir.mkdir(parents=True, exist_ok=True)
            write_text_durably(self.log_dir / "metrics.json", json.dumps(metrics, indent=1))
            for k, v in metrics.items():
                print(f"{k}: {v:.4f}" if isinstance(v, float) and math.isfinite(v) else f"{k}: {v}")
        return metrics
