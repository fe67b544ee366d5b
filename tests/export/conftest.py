"""Builds that several tests of tests/export read, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from export import build_folder

# The quickest complete build: the tiny preset, ONNX only, batch 1, one 1 s bucket, no ORT check.
# tests/export/test_build.py's `tiny_build` argv asks for the same, so it reuses these artifacts.
TINY_ONNX = {"preset": "tiny", "backends": ("onnx",), "durations_s": (1.0,), "verify": False}


@pytest.fixture(scope="session")
def tiny_onnx_options() -> dict:
    """build_folder's options of `tiny_onnx_build` (a copy)."""
    return dict(TINY_ONNX)


@pytest.fixture(scope="session")
def tiny_onnx_build(tmp_path_factory) -> Path:
    """A folder holding the TINY_ONNX build; copy it (shutil.copytree) before changing it."""
    out = tmp_path_factory.mktemp("tiny-onnx") / "tiny"
    build_folder(out, **TINY_ONNX)
    return out
