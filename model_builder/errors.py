"""Typed errors of the builder. Each message names the problem and the fix.

The CLI prints one line (`error: <message>`) and exits with `exit_code`:
2 for bad input or configuration, 1 when a gate (recall, compatibility) fails.
"""

from __future__ import annotations


class BuilderError(Exception):
    """Base class; `str(err)` is a complete, actionable one-line message."""

    exit_code = 2


class ConfigError(BuilderError):
    """A flag or configuration value is invalid or inconsistent."""


class DataError(BuilderError):
    """An input file (interactions, items, embeddings, tower) is unusable."""


class ExportError(BuilderError):
    """The model could not be written to the model base path."""


class VerificationError(BuilderError):
    """The exported model failed the recall gate; it was not published."""

    exit_code = 1


class CompatError(BuilderError):
    """The model uses ops the target serving runtime does not have."""

    exit_code = 1
