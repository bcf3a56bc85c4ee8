"""Argparse flags generated from the config dataclasses (one definition, defaults shown by --help)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")
_SHORT = {"k": "-k"}


def _scalar_type(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """Adds one --flag per field of dataclass `cls`, under a titled group."""
    group = parser.add_argument_group(title, (cls.__doc__ or "").strip().splitlines()[0])
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flags = ["--" + f.name.replace("_", "-")] + ([_SHORT[f.name]] if f.name in _SHORT else [])
        kind = _scalar_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if "default" in help_text:
            # The help already says what the default means; "%(default).0s" prints nothing but
            # stops ArgumentDefaultsHelpFormatter from appending "(default: None)" after it.
            help_text += "%(default).0s"
        if kind is bool:
            group.add_argument(
                *flags, dest=f.name, default=default, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            group.add_argument(*flags, dest=f.name, default=default, type=kind, help=help_text, metavar=f.name.upper())


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Builds a frozen config dataclass from parsed flags."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})  # type: ignore[call-arg]
