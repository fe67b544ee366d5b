"""Typed errors of the export tools; `PrestoError` subclasses, so the CLIs print one line and exit 1."""

from __future__ import annotations

from presto_ref.errors import PrestoError


class BackendUnavailable(PrestoError):
    """A backend (TensorRT, TensorRT-RTX, ONNX Runtime) that was asked for is not installed here."""


class EngineBuildError(PrestoError):
    """Exporting a graph or building an engine from it failed."""
