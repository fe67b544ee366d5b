"""`benchmarks.latency --preset P`: build (or reuse) the artifacts a run needs before timing it.

The build is `python -m export.build` into the --engines folder, so an up-to-date folder is reused
artifact by artifact and nothing is rebuilt. Which build backends a run needs follows from its
--backends on the device it runs on:

    torch, torch-nograph   AOTInductor packages for that device
    onnxruntime            ONNX files (ONNX Runtime runs them on the CPU)
    tensorrt               ONNX files and TensorRT engines
    engines                torch packages on CUDA, ONNX files on the CPU (what `auto` picks)
    eager-*                nothing of their own; the folder's manifest gives them the config, so
                           the cheapest build for the device is made
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from benchmarks.backends import BackendSpec
from presto_common.errors import ArtifactError

log = logging.getLogger(__name__)


def build_backends(specs: Sequence[BackendSpec], device: str) -> list[str]:
    """export.build's --backends for these benchmark backends on `device` ("cpu" or "cuda")."""
    native = "torch" if device == "cuda" else "onnx"
    wanted = set()
    for spec in specs:
        if spec.kind == "eager":
            continue
        rb = spec.runtime_backend
        if rb == "auto":
            wanted.add(native)
        elif rb == "onnxruntime":
            wanted.add("onnx")
        else:  # "torch" or "tensorrt" (whose engines are built from the ONNX files)
            wanted.add(rb)
    return sorted(wanted or {native})


def build_for(
    preset: str,
    folder: Path,
    specs: Sequence[BackendSpec],
    device: str,
    precision: str,
    batch_sizes: str,
    durations_s: str | None,
    log_flags: Sequence[str] = (),
) -> None:
    """Run export.build for `preset` into `folder`; ArtifactError naming the command if it fails."""
    try:
        from export.build import main as build_main
    except ImportError as err:
        raise ArtifactError(
            f"--preset {preset} builds with the export package, which cannot be imported here "
            f"({err}); install the project with `pip install -e .[export]` or pass a built --engines"
        ) from err
    argv = [
        "--preset", preset, "--backends", ",".join(build_backends(specs, device)),
        "--device", device, "--precision", precision, "--batch-sizes", batch_sizes,
        "--no-verify", "--out", str(folder),
    ]  # fmt: skip
    if durations_s:
        argv += ["--durations-s", durations_s]
    argv += list(log_flags)
    log.info("building what the run needs: python -m export.build %s", " ".join(argv))
    if build_main(argv) != 0:
        raise ArtifactError(
            f"building {preset} into {folder} failed (the build printed why); run "
            f"`python -m export.build {' '.join(argv)}` to see it alone"
        )
