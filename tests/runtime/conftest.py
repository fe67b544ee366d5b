"""Tiny builds shared by the runtime tests (built once per session, ONNX only, 1 s buckets)."""

from __future__ import annotations

import json
import shutil
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


DPMPP_STEPS = 3  # solver steps of the dpmpp-2s fixture: 5 guided D evaluations, kept fast


@pytest.fixture(scope="session")
def dpmpp_model():
    """The tiny preset with a 3-step DPM-Solver++(2S) + CFG++ sampler, seeded random weights."""
    import dataclasses

    from presto_ref.checkpoint import random_model
    from presto_ref.presets import get_preset

    tiny = get_preset("tiny")
    sampler = dataclasses.replace(tiny.sampler, kind="dpmpp-2s", num_steps=DPMPP_STEPS)
    return random_model(dataclasses.replace(tiny, sampler=sampler), 0).eval()


@pytest.fixture(scope="session")
def dpmpp_build(tmp_path_factory, dpmpp_model) -> Path:
    """`dpmpp_model` saved as a checkpoint and built at batches 1 and 2 (the DiT at whatever batches
    export builds for a dpmpp-2s config: B, 2B or both)."""
    from presto_ref.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("dpmpp")
    checkpoint = save_checkpoint(dpmpp_model, root / "checkpoint")
    return build_folder(root / "build", "--checkpoint", str(checkpoint), "--batch-sizes", "1,2")


def _split_layouts(folder: Path, out: Path) -> tuple[int, Path, Path]:
    """A request batch B whose DiT the build has at 2B and at B, and two copies of the build: one
    holding the DiT at 2B only (one call per guided evaluation), one at B only (two calls)."""
    data = json.loads((folder / "manifest.json").read_text())
    dit = {(a["batch"], a["frames"]) for a in data["artifacts"] if a["component"] == "dit"}
    dec = {(a["batch"], a["frames"]) for a in data["artifacts"] if a["component"] == "vae_decoder"}
    B = next(b for b, f in sorted(dec) if {(b, f), (2 * b, f)} <= dit)
    copies = []
    for name, drop in (("one-call", B), ("two-calls", 2 * B)):
        copy = out / name
        shutil.copytree(folder, copy)
        kept = [
            a for a in data["artifacts"] if not (a["component"] == "dit" and a["batch"] == drop)
        ]
        (copy / "manifest.json").write_text(json.dumps({**data, "artifacts": kept}))
        copies.append(copy)
    return B, copies[0], copies[1]


@pytest.fixture(scope="session")
def split_layouts():
    """`(folder, out) -> (B, one_call_folder, two_calls_folder)`: see `_split_layouts`."""
    return _split_layouts
