"""Parity of exported artifacts against the eager reference, with the same inputs.

The reference is the graph wrapper around the ORIGINAL fp32 model (weight norm not folded), so one
check covers the export-only rewrites, the precision cast and the exporter together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.spec import ExportSpec, graph_for
from presto_common.errors import BackendUnavailable
from presto_ref.pipeline import Presto
from runtime.engines import ort_session_options


@dataclass(frozen=True)
class Parity:
    """How far an artifact's output is from the reference's (per output, flattened)."""

    rel_l2: float  # ||got - ref|| / ||ref||
    cosine: float  # <got, ref> / (||got|| ||ref||)
    max_abs: float
    argmax: tuple[int, ...]  # where the largest difference is

    def __str__(self) -> str:
        return (
            f"rel L2 {self.rel_l2:.2e}, cosine {self.cosine:.6f}, max |diff| {self.max_abs:.2e} "
            f"at {self.argmax}"
        )

    def as_record(self) -> dict[str, float]:
        """rel_l2, cosine and max_abs: the manifest's record of a check (Artifact.build)."""
        return {"rel_l2": self.rel_l2, "cosine": self.cosine, "max_abs": self.max_abs}


def compare(reference: np.ndarray, got: np.ndarray) -> Parity:
    ref = reference.astype(np.float64)
    out = got.astype(np.float64)
    diff = out - ref
    norm = np.linalg.norm(ref)
    cosine = float(np.dot(ref.ravel(), out.ravel()) / (norm * np.linalg.norm(out) + 1e-300))
    idx = np.unravel_index(np.abs(diff).argmax(), diff.shape)
    return Parity(
        rel_l2=float(np.linalg.norm(diff) / (norm + 1e-300)),
        cosine=cosine,
        max_abs=float(np.abs(diff).max()),
        argmax=tuple(int(i) for i in idx),
    )


@torch.no_grad()
def reference_output(
    model: Presto, spec: ExportSpec, inputs: tuple[torch.Tensor, ...]
) -> np.ndarray:
    """The eager output of the graph `spec` describes, on `inputs`; `model` must be the fp32 one."""
    module = graph_for(model.eval(), spec.component, spec.budget)
    return module(*inputs).float().cpu().numpy()


def run_onnx(path: Path, spec: ExportSpec, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    """Run an ONNX file on ONNX Runtime's CPU provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable(
            "onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu)"
        ) from None
    options = ort_session_options()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs)}
    return session.run([spec.outputs[0].name], feeds)[0]


def check_onnx(model: Presto, spec: ExportSpec, path: Path, seed: int = 0) -> Parity:
    """Parity of the ONNX file at `path` (built from `spec`) against the fp32 reference. The file
    runs first, so a graph ONNX Runtime refuses costs no reference forward."""
    inputs = spec.sample_inputs(seed)
    got = run_onnx(path, spec, inputs)
    return compare(reference_output(model, spec, inputs), got)
