"""Converters from the raw dataset layouts into ViLT arrow files, and the `convert` CLI subcommand."""
from vlmo_fast.data.convert.cli import add_convert_parser, run_convert

__all__ = ["add_convert_parser", "run_convert"]
