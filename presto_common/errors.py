"""The one error tree of presto-trt.

A `PrestoError` is something the user can fix (a bad flag, a missing or stale file, a request outside
what a build accepts, a backend that is not installed); its message names the value received, what
was expected and the fix. The CLIs print it as one line and exit 1. Anything else is a bug and keeps
its traceback. Every package raises these classes; none defines a root of its own.
"""

from __future__ import annotations


class PrestoError(Exception):
    """Base class of every error a user can fix."""


class ConfigError(PrestoError, ValueError):
    """A model, sampler or build config whose values do not fit together."""


class CheckpointError(PrestoError):
    """A checkpoint directory that is missing, incomplete or does not match its config."""


class InputError(PrestoError, ValueError):
    """A generation request outside what the model or build accepts (prompt, BPM, duration, seeds)."""


class NumericalError(PrestoError):
    """A model or engine produced NaN or Inf (weights, dtype or input out of range)."""


class ArtifactError(PrestoError):
    """An engine, package or manifest that is missing, corrupt or built for something else."""


class BackendUnavailable(PrestoError):
    """A backend (TensorRT, TensorRT-RTX, ONNX Runtime, CUDA) that was asked for is not available."""


class ShapeError(PrestoError, ValueError):
    """Inputs whose number, shape, dtype, device or layout differ from what an engine was built for."""


class EngineBuildError(PrestoError):
    """Exporting a graph or building an engine from it failed."""


class OutputError(PrestoError):
    """An output file or folder that cannot be written where the user asked."""


class ServerError(PrestoError):
    """A served request the server refused or failed (its message is the server's one line), or a
    server that cannot be reached or started."""
