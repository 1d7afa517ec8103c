"""The error type for bad names in what the user gave (config keys, tasks, datasets, splits, arrow columns).

It is a KeyError, as Python code expects of a missing name, but the CLI prints it as a one-line message, while any
other KeyError (a bug) keeps its traceback.
"""
from __future__ import annotations


class UnknownNameError(KeyError):
    def __str__(self) -> str:  # KeyError would print the message quoted, as if it were the missing key
        return str(self.args[0]) if self.args else ""
