"""Shared fixtures and the automatic skips for the `gpu` and `trt` markers.

Run everything: `python -m pytest`. The device suite alone: `python -m pytest -m "gpu or trt"`.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

# Polygraphy binds to TensorRT or TensorRT-RTX once per process, when it is first imported, and
# several test modules import it (ONNX folding, engine builds). Where RTX is the only TensorRT
# installed, bind it to RTX before any test runs, so the outcome does not depend on test order.
if (
    importlib.util.find_spec("tensorrt") is None
    and any(importlib.util.find_spec(m) for m in ("tensorrt_rtx", "tensorrt_rtx_bindings"))
    and "polygraphy.config" not in sys.modules
):
    os.environ.setdefault("POLYGRAPHY_USE_TENSORRT_RTX", "1")


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return (
        None if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available() is False)"
    )


def _trt_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") or importlib.util.find_spec("tensorrt_rtx"):
        return None
    return "neither tensorrt nor tensorrt_rtx is importable"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"gpu": _cuda_reason(), "trt": _trt_reason()}
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"needs {marker}: {reason}"))


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny preset with seeded random weights, fp32 on the CPU, in eval mode."""
    from presto_ref.checkpoint import random_model

    return random_model("tiny", seed=0).eval()
