"""Dataclass configs as command-line flags.

A stage's hyperparameters are one dataclass. On the command line every field is a flag (`--learning-rate 1e-5`),
and `--hparams '{"learning_rate": 1e-5, ...}'` sets many at once (this is how the Snakemake rules pass their
`params:`). An unknown key is an error that names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from feedbackflow.errors import ConfigError

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_type(annotation: Any) -> Any:
    """The parser type of a field annotation (`float`, `int | None`, `str`, ...)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(inner[0])
    return annotation


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add `--hparams` and one flag per field of the dataclass `cls` (default: the dataclass default)."""
    group = parser.add_argument_group(f"hyperparameters ({cls.__name__})")
    group.add_argument("--hparams", default=None, help="JSON object of hyperparameters; flags override it")
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = _scalar_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = (field.metadata.get("help", "") + f" (default: {default})").strip()
        if kind is bool:
            group.add_argument(_flag(field.name), type=_parse_bool, default=None, metavar="BOOL", help=help_text)
        elif typing.get_origin(kind) in (list, tuple):
            group.add_argument(_flag(field.name), type=json.loads, default=None, metavar="JSON", help=help_text)
        else:
            group.add_argument(_flag(field.name), type=kind, default=None, help=help_text)


def dataclass_from_dict(cls: type[T], values: dict, where: str = "hparams") -> T:
    """Build `cls` from a dict; an unknown key raises ConfigError naming it."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(names)}")
    return cls(**values)


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build `cls` from `--hparams` JSON, then the per-field flags that were given."""
    values = json.loads(args.hparams) if args.hparams else {}
    if not isinstance(values, dict):
        raise ConfigError("--hparams must be a JSON object")
    for field in dataclasses.fields(cls):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    return dataclass_from_dict(cls, values, where="--hparams")
