"""How many optimizer steps a run makes, and of how many micro-steps each (gradient accumulation to the global
batch)."""
from __future__ import annotations

from dataclasses import dataclass

from vlmo_fast.run_config import RunConfig


@dataclass(frozen=True)
class StepPlan:
    accumulate: int       # micro-steps per optimizer step: batch_size over per_gpu_batchsize x processes
    steps_per_epoch: int  # whole optimizer steps in one epoch of this rank's samples
    total: int            # steps of the learning-rate schedule: max_steps, else max_epoch epochs
    stop: int             # the step the run stops at: max_train_steps when it is earlier

    @classmethod
    def of(cls, config: RunConfig, samples: int, world: int) -> "StepPlan":
        """The plan of a run over `samples` training samples on `world` processes."""
        per_gpu = config.optim.per_gpu_batchsize
        accumulate = max(1, config.optim.batch_size // (per_gpu * world))
        per_epoch = (samples // world // per_gpu) // accumulate
        if per_epoch == 0:
            raise ValueError(f"{samples} training samples are fewer than one step of {per_gpu * accumulate * world}")
        total = config.schedule.max_steps or per_epoch * config.schedule.max_epoch
        stop = min(total, config.schedule.max_train_steps) if config.schedule.max_train_steps else total
        return cls(accumulate, per_epoch, total, stop)
