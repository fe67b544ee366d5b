"""Tiny builds shared by the runtime tests (built once per session, ONNX only, 1 s buckets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.build import main as build_main


def build_folder(out: Path, *extra: str) -> Path:
    """Build ONNX artifacts into `out` with `python -m export.build`'s main; returns `out`."""
    args = ["--backends", "onnx", "--durations-s", "1", "--no-verify", "--out", str(out), "-q"]
    assert build_main([*args, *extra]) == 0
    return out


@pytest.fixture(scope="session")
def build(tmp_path_factory) -> Path:
    """The tiny preset (ping-pong, 4 steps) at batches 1 and 2."""
    out = tmp_path_factory.mktemp("rt") / "tiny"
    return build_folder(out, "--preset", "tiny", "--batch-sizes", "1,2")
