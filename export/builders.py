"""One builder per backend, in one table: `BUILDERS[backend](spec, context) -> (file, details)`.

Each writes one artifact of `spec` into the build's staging folder and returns its file name and
the backend's details for the manifest (`Artifact.build`): timings, versions, targets, parity.

    onnx       `<spec>.onnx` (and `.onnx.data` above 2 GB), checked against the fp32 reference on
               ONNX Runtime's CPU provider unless the plan says not to verify; a quantized DiT is
               the Q/DQ graph of export/quant_onnx.py (opset 19)
    tensorrt   `<spec>.plan` built from the ONNX file of the same spec, already in the folder
    torch      `<spec>-<device>.pt2`, an AOTInductor package compiled for the plan's device; a
               quantized DiT runs real FP8/INT8 GEMMs (export/quant_torch.py)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from export.plan import BuildPlan
from export.spec import ExportSpec
from presto_common.errors import EngineBuildError
from presto_ref.pipeline import Presto
from runtime.manifest import sha256_file

if TYPE_CHECKING:
    from export.quant_scales import Calibration

log = logging.getLogger(__name__)

TIMING_CACHE = "timing.cache"  # full TensorRT's tactic timings, kept in the build folder
# Parity of an fp32 ONNX graph on ONNX Runtime's CPU provider against eager PyTorch: both compute in
# fp32 with other summation orders, which gives relative L2 errors near 1e-6; 1e-4 flags real bugs.
FP32_PARITY_BOUND = 1e-4
# A quantized DiT on ORT CPU against the same fake-quantized module in eager PyTorch: the same
# maths, so this checks the export. Measured on the tiny preset (sample inputs, budgets 0-2): rel L2
# 2.2e-7 to 2.7e-7 for int8 and fp8, no value rounded differently. Another summation order can move
# a value across a rounding boundary of the 8-bit grid, one grid step (1/127 of a range for int8),
# which is likelier the larger the model; 1e-3 leaves room for a few such values, not for a wrong
# scale or axis, which moves every value of a layer.
QDQ_PARITY_BOUND = 1e-3
# The same graph against the fp32 reference on the sample inputs (noise at sigma 1): the error that
# quantization itself makes. Cosine rather than relative L2, as in tests/calibration/test_qdq.py:
# quantization noise barely turns x0, while scales of another model or a broken graph do. The tiny
# preset's random weights give 0.99982 (fp8) to 0.99999 (int8); 0.99 fails only a gross mismatch.
QUANTIZED_MIN_COSINE = 0.99


@dataclass(frozen=True)
class BuildContext:
    """What every builder of one build shares."""

    plan: BuildPlan
    reference: Presto  # the fp32 model as loaded: what the ONNX files are checked against
    staging: Path  # the temporary build folder, moved into place when the build ends
    trt: ModuleType | None  # the TensorRT module of plan.trt_flavor, imported once per build
    calibration: Calibration | None = None  # the scales of plan.calibration, loaded once


Builder = Callable[[ExportSpec, BuildContext], tuple[str, dict]]


def build_onnx(spec: ExportSpec, ctx: BuildContext) -> tuple[str, dict]:
    if spec.quantization is not None:
        return build_quantized_onnx(spec, ctx)
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
        try:
            parity = check_onnx(ctx.reference, spec, result.path)
        except _ort_refusals() as err:
            details["verify_skipped"] = _bf16_refusal(spec, err)
            return result.path.name, details
        details["parity"] = parity.as_record()
        log.info("  %s vs reference on ONNX Runtime CPU: %s", spec.name, parity)
        if spec.precision == "fp32" and parity.rel_l2 > FP32_PARITY_BOUND:
            raise EngineBuildError(
                f"{spec.name}.onnx disagrees with the reference: {parity} (bound "
                f"{FP32_PARITY_BOUND:g}); this is an export bug, please report it"
            )
    return result.path.name, details


def _ort_refusals() -> tuple[type[Exception], ...]:
    """ONNX Runtime's errors for a graph it cannot load (InvalidGraph) or has no kernel for
    (NotImplemented); () where it is not installed (run_onnx then says how to install it)."""
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph
        from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented
    except ImportError:
        return ()
    return InvalidGraph, OrtNotImplemented


def _bf16_refusal(spec: ExportSpec, err: Exception) -> str:
    """Why ONNX Runtime's CPU provider could not check this bf16 graph (it has no bf16 Conv,
    MatMul, Add or Where), logged as a warning; `err` is raised again for any other graph, and for
    an invalid graph whose fault is not its bf16 types: an export bug verify must not hide."""
    invalid = type(err).__name__ == "InvalidGraph"
    if spec.precision != "bf16" or (invalid and "bfloat16" not in str(err)):
        raise err
    reason = f"ONNX Runtime's CPU provider cannot run this bf16 graph: {str(err).split(' : ')[-1]}"
    log.warning("  %s not verified: %s", spec.name, reason)
    return reason


def build_quantized_onnx(spec: ExportSpec, ctx: BuildContext) -> tuple[str, dict]:
    """The Q/DQ DiT graph of `spec` (its module quantized by export/quant_onnx.py). fp32: the graph
    on ONNX Runtime against the same fake-quantized module (QDQ_PARITY_BOUND: the export) and
    against the fp32 reference (QUANTIZED_MIN_COSINE: the scales fit this model). bf16/fp16, which
    ONNX Runtime's CPU provider cannot run: only the module against the reference."""
    from export.onnx_export import export_onnx
    from export.quant_onnx import OPSET, count_quantized, translation_table
    from export.verify import compare, reference_output, run_onnx

    path = ctx.staging / f"{spec.name}.onnx"
    result = export_onnx(spec, path, opset=OPSET, custom_translation_table=translation_table())
    details: dict = {
        "build_s": round(result.export_s, 3),
        "opset": result.opset,
        "quantized_layers": count_quantized(spec.module),
    }
    if result.data_path is not None:
        details["external_data"] = {
            "file": result.data_path.name,
            "sha256": sha256_file(result.data_path),
        }
    if ctx.plan.verify:
        inputs = spec.sample_inputs(0)
        with torch.no_grad():
            fake_quant = spec.module.eval()(*inputs).float().numpy()
        reference = reference_output(ctx.reference, spec, inputs)
        if spec.precision != "fp32":
            # ONNX Runtime's CPU provider has no bf16/fp16 kernels for these graphs (Add, Where),
            # so only the module they were exported from is checked: its scales fit this model.
            parity = compare(reference, fake_quant)
            details["module_parity"] = {"rel_l2": parity.rel_l2, "cosine": parity.cosine}
            log.info("  %s's fake-quantized module vs the fp32 reference: %s", spec.name, parity)
        else:
            got = run_onnx(result.path, spec, inputs)
            qdq = compare(fake_quant, got)
            parity = compare(reference, got)
            details["parity"], details["qdq_parity"] = parity.as_record(), qdq.as_record()
            log.info("  %s vs its fake-quantized module on ONNX Runtime CPU: %s", spec.name, qdq)
            log.info("  %s vs the fp32 reference on ONNX Runtime CPU: %s", spec.name, parity)
            if qdq.rel_l2 > QDQ_PARITY_BOUND:
                raise EngineBuildError(
                    f"{spec.name}.onnx disagrees with its fake-quantized module: {qdq} (bound "
                    f"{QDQ_PARITY_BOUND:g}); this is an export bug, please report it"
                )
        _check_quantized_cosine(spec, ctx, parity)
    return result.path.name, details


def _check_quantized_cosine(spec: ExportSpec, ctx: BuildContext, parity) -> None:
    if parity.cosine < QUANTIZED_MIN_COSINE:
        raise EngineBuildError(
            f"{spec.name} is far from the fp32 reference: {parity} (cosine bound "
            f"{QUANTIZED_MIN_COSINE}); check that --calibration {ctx.plan.calibration} was "
            "made for this model, or calibrate it again"
        )


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
    from export.stft_gemm import stft_as_gemm
    from export.torch_backend import compile_package

    device = ctx.plan.device
    name = f"{spec.name}-{device.replace(':', '')}.pt2"
    details: dict = {}
    if spec.quantization is not None:
        module, details["quantized_layers"] = quantized_torch_module(spec, ctx)
        if ctx.plan.fp8_attention:  # blocks attending in FP8 (export/fp8_sdpa.py)
            details["fp8_attention_blocks"] = sum(
                hasattr(m, "sdpa_scales") for m in module.modules()
            )
        spec = dataclasses.replace(spec, module=module)
    module = spec.module.to(device)
    # On CUDA, 1-D convolutions run as channels-last 2-D ones (export/conv_layout.py) and the
    # log-mel STFT as an fp32 GEMM (export/stft_gemm.py).
    cuda = device.startswith("cuda")
    swap = conv1d_as_conv2d(module) if cuda else nullcontext(0)
    try:
        with swap as swapped, stft_as_gemm(module) if cuda else nullcontext(0):
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
        **details,
    }


def quantized_torch_module(spec: ExportSpec, ctx: BuildContext) -> tuple[torch.nn.Module, int]:
    """The DiT graph of `spec` with real FP8/INT8 GEMMs (export/quant_torch.py) in place of the
    fake-quantized ones, and how many it has: a fresh fp32 export copy of the reference is
    quantized (the Q/DQ graph's scales), then cast to spec.precision but its 8-bit weights and
    fp32 scales. With the plan's fp8_attention its attention is FP8 too (export/fp8_sdpa.py)."""
    from export.quant_torch import quantized_torch_model  # quantized builds only
    from export.spec import graph_for

    assert ctx.calibration is not None and spec.budget is not None, "a quantized DiT spec"
    clone, names = quantized_torch_model(
        ctx.reference, spec.budget, ctx.calibration, spec.precision, ctx.plan.fp8_attention
    )
    return graph_for(clone, "dit", spec.budget), len(names)


BUILDERS: dict[str, Builder] = {
    "onnx": build_onnx,
    "tensorrt": build_tensorrt,
    "torch": build_torch,
}
