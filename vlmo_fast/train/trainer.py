"""The training loop: a readable top-to-bottom loop around the fused objectives (step.py), with gradient
accumulation to the task's global batch, the official schedule, mixed precision, DDP or FSDP2 through torchrun,
atomic checkpoints that resume exactly, and the final evaluation."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from vlmo_fast.checkpoint.durable import fsync_file, write_text_durably
from vlmo_fast.checkpoint.native import save_model
from vlmo_fast.data.dali import DaliDecoder, pick_decoder
from vlmo_fast.distributed import init_distributed
from vlmo_fast.flops import device_peak, step_flops
from vlmo_fast.model.vlmo import VLMo
from vlmo_fast.run_config import RunConfig
from vlmo_fast.seeds import step_seed
from .build import build_model
from .checkpoint_policy import on_save_failure
from .checkpointing import (load_training_state, rng_states, save_replicated_training_state,
                            save_sharded_training_state)
from .data import answer_vocabulary, augments, build_split, epoch_loader, to_device
from .evaluate import evaluate
from .intact import has_checkpoint, resume_checkpoint
from .layouts import LayoutPlanner
from .log_window import LogWindow, timed
from .optim import make_optimizer, make_scheduler, warmup_steps_of
from .parallel import ParallelStep
from .plan import StepPlan
from .run_lock import hold_run_directory
from .runtime import (autocast, autocast_dtype, compile_blocks, compile_mode, compile_step, graphs_compiled,
                      pick_device)
from .sharding import full_state_dict
from .step import StepDraws, task_losses
from .step_draws import draw_step

log = logging.getLogger(__name__)


# The batch entries a compiled step reads (the rest, e.g. the caption strings, would only add guards)
STEP_INPUTS = ("text_ids", "text_lens", "text_ids_mlm", "text_labels_mlm", "image", "image_0", "image_1", "layouts",
               "vqa_targets", "nlvr2_labels")


class TrainingStopped(RuntimeError):
    """Raised when training cannot go on (too many non-finite losses)."""


class StepModule(nn.Module):
    """The model plus the run's objectives: forward(batch) -> (losses, metrics); what DDP wraps."""

    def __init__(self, model: nn.Module, tasks: set[str], gather_grad: bool):
        super().__init__()
        self.model, self.tasks, self.gather_grad = model, tasks, gather_grad

    def forward(self, batch: dict, draws: StepDraws | None = None):
        return task_losses(self.model, batch, self.tasks, self.gather_grad, draws)


class Trainer:
    """A run of a RunConfig: the model, its data, optimizer and schedule are made here; fit() trains (holding the
    run directory), checkpoints, exports the model and evaluates.

    Example: Trainer(resolve("task_mlm_itm_itc_tiny", ["data_root=data", "log_dir=runs/x"])).fit()"""

    def __init__(self, config: RunConfig):
        self.device = pick_device(config.runtime.device)
        self.rank, self.world = init_distributed(self.device)
        torch.manual_seed(config.runtime.seed + self.rank)
        self.answers = answer_vocabulary(config)  # VQA: label -> answer, which also sizes the classifier
        if self.answers is not None:
            config = config.replace(vqav2_label_size=len(self.answers))
        self.config = config
        self.model = build_model(config, self.device)
        self.model.transformer.activation_checkpointing = config.model.activation_checkpointing
        self.tasks = set(self.model.cfg.tasks)
        self.amp = autocast_dtype(config.runtime.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.log_dir = Path(config.runtime.log_dir)
        self.tb = None  # the TensorBoard writer, opened by fit() once the run holds its directory
        self.step_module = StepModule(self.model, self.tasks, config.objectives.itc_gather_grad)
        self.compiles_before = graphs_compiled()  # the log counts the graphs this run compiles
        self.compiled = self._compile()
        self.parallel = ParallelStep(self.step_module, self.model, config.runtime.strategy, self.world, self.device,
                                     evaluation_only=config.evaluation.test_only)
        if self.world > 1:
            log.info("rank %d of %d, %s", self.rank, self.world, "FSDP2" if self.parallel.fsdp else "DDP")
        # the position in training: optimizer steps, epochs, micro-steps into the epoch, steps skipped (non-finite)
        self.step = self.epoch = self.micro = self.skipped = 0
        self.nonfinite = None  # on the device: a micro-step of the current optimizer step had a non-finite loss
        self._stop_signal = None
        self.dataset = self.dali = self.plan = self.optimizer = self.scheduler = self.planner = None
        if not config.evaluation.test_only:
            self._prepare_training()

    def _compile(self) -> str | None:
        """The `compile` key (runtime.compile_mode), applied before any wrapping: the whole step module (one full
        graph in a single process; collectives break the graph in several) or FSDP2's blocks."""
        fsdp = self.config.runtime.strategy == "fsdp" and self.world > 1 and not self.config.evaluation.test_only
        mode = compile_mode(self.config.runtime.compile, self.device, self.amp, fsdp)
        if mode == "blocks":
            compile_blocks(self.model)
        elif mode == "step":
            compile_step(self.step_module, fullgraph=self.world == 1)
        return mode

    def _prepare_training(self) -> None:
        """The training split (and its DALI decoder), the step plan, the optimizer and the schedule."""
        cfg = self.config
        decoder = pick_decoder(self.device, cfg.data.decoder)
        self.dataset = build_split(cfg, "train", train=True, decode=decoder)
        if decoder == "dali":  # decodes (and augments) whole batches, on the GPU where there is one
            self.dali = DaliDecoder(cfg.model.image_size, train=augments(cfg), device=self.device,
                                    batch_size=cfg.optim.per_gpu_batchsize, seed=cfg.runtime.seed + self.rank)
        self.plan = StepPlan.of(cfg, len(self.dataset), self.world)
        if self.compiled == "step":  # the compiled step reads layouts the loader planned (bucketed shapes)
            self.planner = LayoutPlanner(frozenset(self.tasks), self.model.cfg.num_image_tokens,
                                         vqa_labels=self.model.cfg.vqa_label_size)
        self.optimizer = make_optimizer(self.model, cfg.optim.learning_rate, cfg.optim.weight_decay,
                                        cfg.optim.lr_mult)
        warmup = warmup_steps_of(cfg.schedule.warmup_steps, self.plan.total)
        self.scheduler = make_scheduler(self.optimizer, warmup, self.plan.total)

    # ----------------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train (or with test_only evaluate) holding the run directory's lock (one run per log_dir)."""
        with hold_run_directory(self.log_dir):
            if self.config.evaluation.test_only:
                return self.final_evaluation()
            self._open_log()
            self._resume_if_asked()
            with self._stop_on_signals():
                self._train()
            if self._stop_signal is not None:
                log.warning("stopped by signal %d at step %d; resume with resume=True", self._stop_signal, self.step)
                print(f"stopped at step {self.step}; resume with resume=True", flush=True)
                return {}
            self._export()
            return self.final_evaluation()

    def _train(self) -> None:
        """Epochs of optimizer steps until the plan's stop (or a stop signal); ends with the "last" checkpoint."""
        self.model.train()
        bar = tqdm(total=self.plan.stop, initial=self.step, disable=self.rank != 0, desc=self.config.runtime.exp_name,
                   unit="step")
        window = LogWindow()
        while self.step < self.plan.stop and self._stop_signal is None:
            if self._train_epoch(bar, window):
                self.epoch, self.micro = self.epoch + 1, 0
                if not self.config.checkpoint.checkpoint_every and self.step < self.plan.stop:
                    self._save()
        bar.close()
        if self.tb is not None:
            self.tb.close()
        self._save("last")

    def _train_epoch(self, bar: tqdm, window: LogWindow) -> bool:
        """The rest of the current epoch, step by step; False when the run stops within it."""
        data = epoch_loader(self.dataset, self.config, self.config.optim.per_gpu_batchsize, self.plan.accumulate,
                            self.epoch, self.micro, self.rank, self.world, self.device, self.dali, self.planner)
        for batch in timed(data, window):
            losses, metrics = self.train_step(batch, window)
            if self.micro % self.plan.accumulate:  # more micro-steps to accumulate before the update
                continue
            self.optimizer_step(losses)
            window.steps += 1
            bar.update(1)
            if self.step % self.config.runtime.log_every == 0 or self.step == self.plan.stop:
                record = self._log(window, losses, metrics)
                bar.set_postfix(loss=f"{record['loss']:.3f}", samples_s=f"{record['samples_per_s']:.1f}")
            every = self.config.checkpoint.checkpoint_every
            if every and self.step % every == 0:
                self._save()
            if self.step >= self.plan.stop or self._stop_signal is not None:
                return False
        return True

    def train_step(self, batch: dict, window: LogWindow) -> tuple[dict, dict]:
        """One micro-step: forward and backward of a batch.  Whether its loss is finite is noted on the device and
        read once per optimizer step (optimizer_step skips the update then).  Returns its losses and metrics."""
        ready = time.perf_counter()
        flops = step_flops(self.model.cfg, self.tasks, batch["text_lens"].tolist())  # host-side lengths
        batch = to_device(batch, self.device)
        window.wait += time.perf_counter() - ready
        last = (self.micro + 1) % self.plan.accumulate == 0  # the optimizer step's last micro-step
        generator = torch.Generator(self.device).manual_seed(self._micro_step_seed())
        if self.planner is None:
            inputs, draws = batch, StepDraws(generator)
        else:  # the compiled step: its randomness drawn here, its inputs only what it reads
            inputs = {k: v for k, v in batch.items() if k in STEP_INPUTS}
            draws = draw_step(self.model, batch["layouts"], self.tasks, generator)
        with self.parallel.gradient_sync(last):
            with autocast(self.device, self.amp):
                losses, metrics = self.parallel(inputs, draws)
            loss = sum(losses.values())
            finite = torch.isfinite(loss.detach())
            self.nonfinite = ~finite if self.nonfinite is None else self.nonfinite | ~finite
            self.scaler.scale(loss / self.plan.accumulate).backward()
        self.micro += 1
        window.add_micro_step(self.config.optim.per_gpu_batchsize * self.world, flops * self.world, loss)
        return losses, metrics

    def _micro_step_seed(self) -> int:
        """Seed of the step's random draws: distinct per micro-step and rank, the same after a resume."""
        return step_seed(self.config.runtime.seed, self.step * self.plan.accumulate + self.micro, self.rank,
                         self.world)

    def optimizer_step(self, losses: dict) -> None:
        """Update with the accumulated gradients, or skip the update after a non-finite loss (too many skips stop
        the run); then the next step.  All ranks skip together, or DDP would hang."""
        skip = self.parallel.any_rank(self.nonfinite)  # the step's one read of the device
        self.nonfinite = None
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            log.warning("non-finite loss at step %d: update skipped (%d so far)", self.step, self.skipped)
            limit = self.config.optim.nan_limit
            if self.skipped >= limit:
                raise TrainingStopped(f"{self.skipped} steps had a non-finite loss (limit nan_limit={limit}); "
                                      f"last losses: { {k: float(v.detach()) for k, v in losses.items()} }")
        else:
            self.parallel.average_replicated_gradients()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        self.step += 1

    # ----------------------------------------------------------------------------------------------------------
    def _open_log(self) -> None:
        """The run directory and (rank 0, where installed) its TensorBoard writer."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.log_dir / "tensorboard"))
        except ImportError:
            log.info("tensorboard is not installed: logging to log.jsonl only")

    def _log(self, window: LogWindow, losses: dict, metrics: dict) -> dict:
        """The log record of the window (to log.jsonl and TensorBoard on rank 0); the next window starts."""
        peak = device_peak(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None
        record = window.record(self.step, self.epoch, self.scheduler.get_last_lr()[0], peak, losses, metrics)
        record["compiles"] = graphs_compiled() - self.compiles_before
        window.reset()
        if self.rank == 0:
            with open(self.log_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tb is not None:
                for k, v in record.items():
                    if k != "step" and isinstance(v, (int, float)):
                        self.tb.add_scalar(k, v, record["step"])
        return record

    def _resume_if_asked(self) -> None:
        """resume=True: continue from the newest intact checkpoint of log_dir; auto: when there is one."""
        resume, directory = self.config.checkpoint.resume, self.log_dir / "checkpoints"
        if not (resume is True or (resume == "auto" and has_checkpoint(directory))):
            return
        ckpt = resume_checkpoint(directory, self.config.checkpoint.verify_checkpoint)
        state = load_training_state(ckpt, self.model, self.optimizer, self.scheduler, self.scaler, self.device)
        self.step, self.epoch, self.micro, self.skipped = (state[k] for k in ("step", "epoch", "micro", "skipped"))
        log.info("resumed from %s at step %d", ckpt, self.step)

    def _save(self, tag: str | None = None) -> None:
        """Durable, atomic checkpoint of everything needed to resume exactly (rank 0 writes; with FSDP every rank its
        shards); a failed save follows checkpoint_on_error (the "last" one, after which none follows, stops)."""
        position = dict(step=self.step, epoch=self.epoch, micro=self.micro, skipped=self.skipped)
        rng = rng_states()
        if self.rank == 0 and (self.log_dir / "log.jsonl").is_file():
            fsync_file(self.log_dir / "log.jsonl")  # the log on disk reaches at least the checkpoint's step
        save = save_sharded_training_state if self.parallel.fsdp else save_replicated_training_state
        with on_save_failure(self.config.checkpoint.checkpoint_on_error, final=tag == "last"):
            save(self.log_dir / "checkpoints", self.model, self.optimizer, self.scheduler, self.scaler, position, tag,
                 rng)

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

    def _export(self) -> None:
        """The trained model to log_dir/model (with the VQA answers and the run's config), unsharded first."""
        if self.parallel.fsdp:
            self._unshard()
        if self.rank == 0:
            save_model(self.model, self.log_dir / "model",
                       {"vqa_answers": self.answers, "official_config": self.config.to_dict()})

    def _unshard(self) -> None:
        """After FSDP training: every rank swaps its shards for a whole, plain copy of the model (evaluation and the
        exported model run unsharded, exactly as after a single-process run)."""
        state = full_state_dict(self.model)
        cfg = self.model.cfg
        self.parallel = self.step_module = self.optimizer = None  # frees the shards and the optimizer state
        self.model = VLMo(cfg).to(self.device)
        self.model.load_state_dict(state, strict=True)

    def final_evaluation(self) -> dict:
        """Evaluate the task's metrics; write log_dir/metrics.json (rank 0) and return them."""
        self.model.eval()
        with autocast(self.device, self.amp):
            metrics = evaluate(self.model, self.config, self.device, self.answers, self.log_dir)
        if self.rank == 0:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            write_text_durably(self.log_dir / "metrics.json", json.dumps(metrics, indent=1))
            for k, v in metrics.items():
                print(f"{k}: {v:.4f}" if isinstance(v, float) and math.isfinite(v) else f"{k}: {v}")
        return metrics
