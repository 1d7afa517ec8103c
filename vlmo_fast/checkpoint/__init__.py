"""Checkpoints: official files (reading, conversion, loading with a report) and vlmo-fast's own format."""
from .files import read_checkpoint
from .load import CheckpointMismatchError, LoadReport, load_into, load_official
from .native import load_model, save_model

__all__ = ["read_checkpoint", "CheckpointMismatchError", "LoadReport", "load_into", "load_official",
           "load_model", "save_model"]
