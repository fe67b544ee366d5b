"""`benchmarks.latency --preset P`: build (or reuse) the artifacts a run needs before timing it.

The build is `export.build_folder` into the --engines folder, which reuses every artifact of an
earlier build there whose inputs did not change. The build backends follow from --backends on the
device the run uses:

    torch, torch-nograph   AOTInductor packages for that device
    onnxruntime            ONNX files (ONNX Runtime runs them on the CPU)
    tensorrt               ONNX files and TensorRT engines
    engines                torch packages on CUDA, ONNX files on the CPU (what `auto` picks)
    eager-*                nothing of their own: the eager model takes the config and its costs
                           from the build, so the cheapest build for the device is made
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from benchmarks.backends import BackendSpec
from presto_common.errors import ArtifactError
from runtime import Manifest

log = logging.getLogger(__name__)


def build_backends(specs: Sequence[BackendSpec], device: str) -> list[str]:
    """export's backends for these benchmark backends on `device` ("cpu" or "cuda")."""
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
    batch_sizes: Sequence[int],
    durations_s: Sequence[float] | None,
) -> Manifest:
    """Build (or reuse) `preset`'s artifacts for `specs` into `folder`; the manifest written."""
    try:
        import export
    except ImportError as err:
        raise ArtifactError(
            f"--preset {preset} builds with the export package, which cannot be imported here "
            f"({err}); install the project with `pip install -e .[export]` or pass a built --engines"
        ) from err
    backends = build_backends(specs, device)
    log.info(
        "building what the run needs: %s, backends %s, %s on %s, batches %s, durations %s s, "
        "into %s",
        preset,
        ",".join(backends),
        precision,
        device,
        list(batch_sizes),
        list(durations_s) if durations_s else "(the longest)",
        folder,
    )
    return export.build_folder(
        folder,
        preset=preset,
        backends=backends,
        precision=precision,
        batch_sizes=tuple(batch_sizes),
        durations_s=None if durations_s is None else tuple(durations_s),
        device=device,
        verify=False,
    )
