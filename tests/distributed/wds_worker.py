"""Run under torchrun (2 processes, gloo): the trainer over tar shards, recording the sample keys of every batch it
trains on (with its epoch and position) to RECORD.rank{r}; with KILL_AT > 0, rank 0 SIGKILLs itself when it fetches
the batch after step KILL_AT (after that step's checkpoint), as a crash mid-epoch would."""
from __future__ import annotations

import json
import os
import signal
import sys

from vlmo_fast.train import trainer as training
from vlmo_fast.train.tasks import resolve


def main(record: str, kill_at: int, overrides: list[str]) -> None:
    rank = int(os.environ["RANK"])
    trainer = None
    to_device = training.to_device

    def recording(batch, device):
        if kill_at and trainer.step == kill_at and rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        with open(f"{record}.rank{rank}", "a") as f:
            f.write(json.dumps({"epoch": trainer.epoch, "micro": trainer.micro,
                                "keys": batch["raw_index"].tolist()}) + "\n")
        return to_device(batch, device)

    training.to_device = recording
    trainer = training.Trainer(resolve("task_mlm_itm_itc_tiny", overrides))
    trainer.fit()
    del trainer
    from vlmo_fast.distributed import shutdown
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
