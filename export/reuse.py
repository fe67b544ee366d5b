"""Reusing artifacts of earlier builds: the --out folder's own, then each --reuse-from folder's.

An artifact is taken instead of rebuilt when its key (component, backend, precision, quantization,
budget, batch, frames) and its signature (config hash, weights digest, opset, torch and toolkit
versions, the backend's own targets, and a quantized DiT's calibration sha256) both match, and its
file still has the recorded sha256. Files are hard-linked into the new build (instant for multi-GB
packages), or copied across file systems.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch

from export.plan import BuildPlan
from export.spec import ExportSpec
from presto_common.errors import ConfigError, PrestoError
from presto_common.names import TOOLKIT_VERSION
from runtime.manifest import MANIFEST_FILE, Artifact, Manifest, sha256_file

log = logging.getLogger(__name__)

Source = tuple[Manifest, Path]  # an earlier build's manifest and its folder


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in state_dict order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def signature(plan: BuildPlan, backend: str, config_hash: str, weights: str) -> dict:
    """Everything besides the spec that decides an artifact's bytes; equal signatures can be reused."""
    from export.onnx_export import OPSET

    sig = {
        "config_hash": config_hash,
        "weights_sha256": weights,
        "opset": OPSET,
        "torch": torch.__version__,
        "toolkit": TOOLKIT_VERSION,
    }
    if backend == "tensorrt":
        sig.update(trt=plan.trt_flavor, compute_capabilities=list(plan.compute_capabilities))
    if backend == "torch":
        sig.update(device=plan.device)
    return sig


def spec_signature(sig: dict, spec: ExportSpec, plan: BuildPlan, backend: str) -> dict:
    """A backend's signature plus, for a quantized DiT, its quantization and calibration sha256
    (a quantized artifact is never taken for another calibration's, nor an unquantized one), and
    for a torch package whose attention is FP8, that (it is never taken for a bf16-attention one)."""
    if spec.quantization is None:
        return sig
    quantized = {"quantization": spec.quantization, "calibration_sha256": plan.calibration_sha256}
    if backend == "torch" and plan.fp8_attention:
        quantized["fp8_attention"] = True
    return {**sig, **quantized}


def reuse_sources(out: Path, others: tuple[Path, ...]) -> list[Source]:
    """--out's earlier build (if readable), then each --reuse-from folder (which must be)."""
    sources = []
    old = load_previous(out)
    if old is not None:
        sources.append((old, out))
    for folder in others:
        if not (folder / MANIFEST_FILE).is_file():
            raise ConfigError(
                f"--reuse-from {folder}: no {MANIFEST_FILE} there; pass a folder written by "
                f"`python -m export.build`"
            )
        try:
            sources.append((Manifest.load(folder), folder))
        except PrestoError as err:
            raise ConfigError(f"--reuse-from {folder}: {err}") from err
    return sources


def load_previous(out: Path) -> Manifest | None:
    """The manifest of the build already in `out`, or None when there is none or it cannot be read.

    A folder of another schema version, or a broken one, is not an error: the build replaces it,
    and one warning says why nothing of it is reused.
    """
    if not (out / MANIFEST_FILE).is_file():
        return None
    try:
        return Manifest.load(out)
    except PrestoError as err:
        log.warning("rebuilding every artifact of %s instead of reusing them: %s", out, err)
        return None


def artifact_key(spec: ExportSpec, backend: str) -> tuple:
    """What identifies `spec`'s artifact for `backend` in a manifest (`Artifact.key`)."""
    return (
        spec.component,
        backend,
        spec.precision,
        spec.quantization,
        spec.budget,
        spec.batch,
        spec.frames,
    )


def reusable(sources: list[Source], key: tuple, sig: dict) -> tuple[Artifact, Path] | None:
    """The first (artifact, its folder) among `sources` with this key and signature, file intact."""
    for manifest, folder in sources:
        for art in manifest.artifacts:
            if art.key == key and art.build.get("signature") == sig:
                path = folder / art.file
                if path.is_file() and sha256_file(path) == art.sha256:
                    return art, folder
    return None


def take(art: Artifact, folder: Path, staging: Path) -> None:
    """Place a reused artifact's file (and its ONNX external data, if any) into `staging`."""
    names = [art.file]
    if "external_data" in art.build:
        names.append(art.build["external_data"]["file"])
    for name in names:
        place(folder / name, staging / name)


def place(src: Path, dst: Path) -> None:
    """Hard-link src to dst (instant for multi-GB packages), or copy it across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
