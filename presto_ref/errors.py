"""Typed errors for user and environment mistakes.

A `PrestoError` is something the user can fix (a bad flag, a missing file, a config that does not add
up); its message names the value received, what was expected and the fix. The CLIs print it as one
line and exit 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PrestoError(Exception):
    """Base class of every error a user can fix."""


class ConfigError(PrestoError, ValueError):
    """A model or sampler config whose values do not fit together."""


class CheckpointError(PrestoError):
    """A checkpoint directory that is missing, incomplete or does not match its config."""


class InputError(PrestoError, ValueError):
    """A generation request outside what the model accepts (prompt, BPM, duration, seeds)."""


class NumericalError(PrestoError):
    """A model produced NaN or Inf (weights, dtype or input out of range)."""
