"""The checkpoint keys of a run (verify_checkpoint, checkpoint_on_error) and what a run does when a checkpoint
cannot be written: stop with the cause, or (checkpoint_on_error=retry) go on and try again at the next interval."""
from __future__ import annotations

import contextlib
import logging

from .checkpointing import CheckpointSaveError

log = logging.getLogger(__name__)

ON_ERROR = ("stop", "retry")


def check_checkpoint_keys(config: dict) -> None:
    """Fail, naming the key, on a value the trainer cannot act on."""
    if not isinstance(config["verify_checkpoint"], bool):
        raise ValueError(f"verify_checkpoint={config['verify_checkpoint']!r}: expected True or False")
    if config["checkpoint_on_error"] not in ON_ERROR:
        raise ValueError(f"checkpoint_on_error={config['checkpoint_on_error']!r}: expected one of "
                         f"{', '.join(ON_ERROR)}")


@contextlib.contextmanager
def on_save_failure(config: dict, final: bool):
    """Around a save: a CheckpointSaveError stops the run with the cause and what to do, unless the policy is retry
    and a later interval can try again (`final`: the run's last checkpoint, after which there is none)."""
    try:
        yield
    except CheckpointSaveError as err:
        policy = config["checkpoint_on_error"]
        if policy == "retry" and not final:
            log.warning("%s; training goes on (checkpoint_on_error=retry): the next checkpoint is tried at the next "
                        "interval", err)
            return
        why = ("it was the run's final checkpoint" if policy == "retry"
               else "checkpoint_on_error=stop; retry would go on and try again at the next interval")
        raise CheckpointSaveError(f"{err}. The run stops ({why}); free the space or fix the cause, then continue "
                                  "from the previous checkpoint with resume=True") from err
