"""Typed errors of the runtime, mirroring `presto_ref.errors` (the runtime may not import presto_ref).

A `PrestoError` is something the user can fix: a missing or stale artifact, a request outside the
built shapes, a backend that is not installed. Its message names the value received, what was
expected and the fix, so a CLI prints it as one line and exits 1. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class PrestoError(Exception):
    """Base class of every runtime error a user can fix."""


class ArtifactError(PrestoError):
    """An engine, package or manifest that is missing, corrupt or built for something else."""


class BackendUnavailable(PrestoError):
    """A backend (TensorRT, ONNX Runtime, CUDA) that an artifact needs is not available here."""


class ShapeError(PrestoError, ValueError):
    """Inputs whose number, shape, dtype, device or layout differ from what the engine was built for."""


class InputError(PrestoError, ValueError):
    """A generation request outside what the build accepts (prompt, BPM, duration, batch, seeds)."""


class NumericalError(PrestoError):
    """An engine produced NaN or Inf."""
