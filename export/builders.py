"""One builder per backend, in one table: `BUILDERS[backend](spec, context) -> (file, details)`.

Each writes one artifact of `spec` into the build's staging folder and returns its file name and
the backend's details for the manifest (`Artifact.build`): timings, versions, targets, parity.

    onnx       `<spec>.onnx` (and `.onnx.data` above 2 GB), checked against the fp32 reference on
               ONNX Runtime's CPU provider unless the plan says not to verify
    tensorrt   `<spec>.plan` built from the ONNX file of the same spec, already in the folder
    torch      `<spec>-<device>.pt2`, an AOTInductor package compiled for the plan's device
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from export.plan import BuildPlan
from export.spec import ExportSpec
from presto_common.errors import EngineBuildError
from presto_ref.pipeline import Presto
from runtime.manifest import sha256_file

log = logging.getLogger(__name__)

TIMING_CACHE = "timing.cache"  # full TensorRT's tactic timings, kept in the build folder
# Parity of an fp32 ONNX graph on ONNX Runtime's CPU provider against eager PyTorch: both compute in
# fp32 with other summation orders, which gives relative L2 errors near 1e-6; 1e-4 flags real bugs.
FP32_PARITY_BOUND = 1e-4


@dataclass(frozen=True)
class BuildContext:
    """What every builder of one build shares."""

    plan: BuildPlan
    reference: Presto  # the fp32 model as loaded: what the ONNX files are checked against
    staging: Path  # the temporary build folder, moved into place when the build ends
    trt: ModuleType | None  # the TensorRT module of plan.trt_flavor, imported once per build


Builder = Callable[[ExportSpec, BuildContext], tuple[str, dict]]


def build_onnx(spec: ExportSpec, ctx: BuildContext) -> tuple[str, dict]:
    from export.onnx_export import export_onnx
    from export.verify import check_onnx

    result = export_onnx(spec, ctx.staging / f"{spec.name}.onnx")
    details: dict = {"build_s": round(result.export_s, 3), "opset": result.opset}
    if result.data_path is not None:
        details["external_data"] = {
            "file": result.data_path.name,
            "sha256": sha256_file(result.data_path),
        }
    if ctx.plan.verify:
        parity = check_onnx(ctx.reference, spec, result.path)
        details["parity"] = {
            "rel_l2": parity.rel_l2,
            "cosine": parity.cosine,
            "max_abs": parity.max_abs,
        }
        log.info("  %s vs reference on ONNX Runtime CPU: %s", spec.name, parity)
        if spec.precision == "fp32" and parity.rel_l2 > FP32_PARITY_BOUND:
            raise EngineBuildError(
                f"{spec.name}.onnx disagrees with the reference: {parity} (bound "
                f"{FP32_PARITY_BOUND:g}); this is an export bug, please report it"
            )
    return result.path.name, details


def build_tensorrt(spec: ExportSpec, ctx: BuildContext) -> tuple[str, dict]:
    from export.trt_build import build_engine

    plan, name = ctx.plan, f"{spec.name}.plan"
    result = build_engine(
        ctx.staging / f"{spec.name}.onnx",  # built or reused just before, in the same folder
        ctx.staging / name,
        flavor=plan.trt_flavor,
        compute_capabilities=list(plan.compute_capabilities) or None,
        # Full TensorRT keeps its tactic timings between builds; RTX has no timing cache.
        timing_cache=ctx.staging / TIMING_CACHE if plan.trt_flavor == "tensorrt" else None,
        trt_module=ctx.trt,
    )
    expected = tuple((t.name, t.dtype_name, t.shape) for t in spec.inputs)
    got = tuple((n, d, tuple(s)) for n, d, s in result.inputs)
    if got != expected or len(result.outputs) != len(spec.outputs):
        raise EngineBuildError(
            f"{name}: the built network's inputs {got} differ from the manifest's {expected}"
        )
    return name, {
        "build_s": round(result.build_s, 3),
        "trt": result.flavor,
        "trt_version": result.trt_version,
        "compute_capabilities": list(result.compute_capabilities),
    }


def build_torch(spec: ExportSpec, ctx: BuildContext) -> tuple[str, dict]:
    from export.conv_layout import CONV2D_INDUCTOR_OPTIONS, conv1d_as_conv2d
    from export.torch_backend import compile_package

    device = ctx.plan.device
    name = f"{spec.name}-{device.replace(':', '')}.pt2"
    module = spec.module.to(device)
    # On CUDA, 1-D convolutions run as channels-last 2-D ones (export/conv_layout.py).
    swap = conv1d_as_conv2d(module) if device.startswith("cuda") else nullcontext(0)
    try:
        with swap as swapped:
            result = compile_package(
                module,
                spec.sample_inputs(device=device),
                ctx.staging / name,
                device=device,
                options=CONV2D_INDUCTOR_OPTIONS if swapped else None,
            )
    finally:
        spec.module.to("cpu")
    return name, {
        "build_s": round(result.build_s, 3),
        "device": device,
        "torch_version": result.torch_version,
    }


BUILDERS: dict[str, Builder] = {
    "onnx": build_onnx,
    "tensorrt": build_tensorrt,
    "torch": build_torch,
}
