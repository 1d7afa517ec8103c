"""The typed keys of a run config: each dataclass field is one key under its official name, typed by its annotation
and bounded by `key(...)`; `check_section` checks (and normalises) every field of a section at construction, and
`parse_text` reads a command-line value (`per_gpu_batchsize=32`) as the key's type expects.

Errors name the key and what it accepts: `per_gpu_batchsize=-3: must be >= 1`, `learning_rate='abc': expected a
number`, `strategy='x': expected one of ddp, fsdp`.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import operator
import types
import typing
from typing import Any, Literal, Union


def key(default: Any = dataclasses.MISSING, *, ge: float | None = None, le: float | None = None,
        lt: float | None = None, official: bool = True, official_default: Any = dataclasses.MISSING,
        doc: str = "") -> Any:
    """A config field.  ge/le/lt: bounds of a number; official=False: a key vlmo-fast adds to the official config;
    official_default: the official code's default where vlmo-fast's differs (precision); doc: what it does."""
    meta = dict(ge=ge, le=le, lt=lt, official=official, official_default=official_default, doc=doc)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copied(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def copied(value: Any) -> Any:
    """A list or dict value copied (one level: the values of keys are flat), anything else as it is."""
    return type(value)(value) if isinstance(value, (list, dict)) else value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def key_type(cls: type, name: str) -> Any:
    """The annotation of field `name` of section `cls`."""
    return _hints(cls)[name]


def check_section(section) -> None:
    """Check every field of a (frozen) section dataclass against its type and bounds; numbers are normalised (an
    int given for a float becomes a float, 0/1 for a bool becomes the bool)."""
    for f in dataclasses.fields(section):
        value = check_value(f.name, getattr(section, f.name), key_type(type(section), f.name), f.metadata)
        object.__setattr__(section, f.name, value)


def check_value(name: str, value: Any, hint: Any, meta: typing.Mapping) -> Any:
    """The value of key `name`, checked against its type `hint` and bounds; raises ValueError naming the key."""
    value = _typed(name, value, hint)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for bound, (holds, word) in _BOUNDS.items():
            limit = meta.get(bound)
            if limit is not None and not holds(value, limit):
                raise ValueError(f"{name}={value!r}: must be {word} {limit}")
    return value


_BOUNDS = {"ge": (operator.ge, ">="), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def _typed(name: str, value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        for choice in args:  # by type too: 1 is not True, "16" is not 16
            if type(choice) is type(value) and choice == value:
                return value
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(dict.fromkeys(map(str, args)))}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        errors = []
        for kind in kinds:
            try:
                return _typed(name, value, kind)
            except ValueError as err:
                errors.append(err)
        if len(kinds) == 1:
            raise ValueError(f"{errors[0]}{' or None' if type(None) in args else ''}")
        raise ValueError(f"{name}={value!r}: expected {' or '.join(_describe(k) for k in args)}")
    if origin is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, args[0]) for v in value):
            raise ValueError(f"{name}={value!r}: expected a list of {args[0].__name__} (a,b,c on the command line)")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name}={value!r}: expected a dict ({name}.KEY=VALUE on the command line)")
        return {k: _typed(f"{name}.{k}", v, args[1]) for k, v in value.items()}
    return _scalar(name, value, hint)


def _scalar(name: str, value: Any, hint: type) -> Any:
    if hint is bool:
        if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
            return bool(value)
        raise ValueError(f"{name}={value!r}: expected True or False")
    if hint is float and type(value) in (int, float):
        return float(value)
    if type(value) is hint:
        return value
    raise ValueError(f"{name}={value!r}: expected {_describe(hint)}")


def _describe(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "True or False",
            type(None): "None"}.get(hint, str(hint))


def parse_text(hint: Any, text: str) -> Any:
    """A command-line value for a key of type `hint`: a string key takes the text as it is (None for an optional
    one written None); a list of strings takes a comma list (`datasets=coco,f30k`) or a Python list; any other
    key a Python literal (numbers, True, None, dicts), or the text itself where it is none (the check then names
    the key and the type it expects)."""
    if _accepts(hint, str) and not _accepts(hint, int, float, bool, list):
        return None if text == "None" and _accepts(hint, type(None)) else text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if typing.get_origin(hint) is list and isinstance(value, str):
        value = [v for v in value.split(",") if v]
    return value


def _accepts(hint: Any, *kinds: type) -> bool:
    """Whether `hint` (a type, a union or a Literal) admits a value of any of `kinds`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_accepts(a, *kinds) for a in args)
    if origin is Literal:
        return any(type(a) in kinds for a in args)
    return (origin or hint) in kinds
