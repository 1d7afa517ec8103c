"""What a run does when a checkpoint cannot be written (the checkpoint_on_error key): stop with the cause, or
(checkpoint_on_error=retry) go on and try again at the next interval."""
from __future__ import annotations

import contextlib
import logging

from .checkpointing import CheckpointSaveError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def on_save_failure(policy: str, final: bool):
    """Around a save: a CheckpointSaveError stops the run with the cause and what to do, unless `policy` is retry
    and a later interval can try again (`final`: the run's last checkpoint, after which there is none)."""
    try:
        yield
    except CheckpointSaveError as err:
        if policy == "retry" and not final:
            log.warning("%s; training goes on (checkpoint_on_error=retry): the next checkpoint is tried at the next "
                        "interval", err)
            return
        why = ("it was the run's final checkpoint" if policy == "retry"
               else "checkpoint_on_error=stop; retry would go on and try again at the next interval")
        raise CheckpointSaveError(f"{err}. The run stops ({why}); free the space or fix the cause, then continue "
                                  "from the previous checkpoint with resume=True") from err
