"""Error types the CLI prints as one-line messages: bad names in what the user gave (config keys, tasks, datasets,
splits, arrow columns), and a run stopped by its surroundings (a run directory in use, a full disk).

UnknownNameError is a KeyError, as Python code expects of a missing name, but the CLI prints it as a one-line
message, while any other KeyError (a bug) keeps its traceback.
"""
from __future__ import annotations


class UnknownNameError(KeyError):
    def __str__(self) -> str:  # KeyError would print the message quoted, as if it were the missing key
        return str(self.args[0]) if self.args else ""


class RunError(RuntimeError):
    """A run cannot start or go on for a reason outside the code (its directory is in use, a checkpoint cannot be
    written); the message says what and what to do."""
