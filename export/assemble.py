"""The manifest of a build: one `Artifact` per file, the sampler defaults and the build environment.

Every artifact records what one call costs (`flops`, `weight_bytes`), counted on the reference
model by `presto_ref.flops.forward_cost` at the artifact's bucket, budget and precision, so the
benchmarks read the roofline inputs from the build. A dpmpp-2s model's DiT artifacts have batch 2B
for B takes (CFG++'s conditional and unconditional passes in one call), which their
`build["guidance_batch"]` spells out.
"""

from __future__ import annotations

import platform
from pathlib import Path
from types import ModuleType

import torch

from export.plan import BuildPlan
from export.spec import ExportSpec, TensorSpec
from presto_common.names import TOOLKIT_VERSION, torch_dtype
from presto_common.schedule import karras_sigmas
from presto_ref.config import PrestoConfig
from presto_ref.flops import forward_cost
from runtime.manifest import (
    SCHEMA_VERSION,
    Artifact,
    Manifest,
    SamplerDefaults,
    TensorInfo,
    sha256_file,
)


def artifact_record(
    config: PrestoConfig,
    spec: ExportSpec,
    backend: str,
    folder: Path,
    file: str,
    details: dict,
    sha256: str | None = None,
    *,
    calibration_sha256: str | None = None,
) -> Artifact:
    """The manifest entry of `folder/file`, built from `spec` for `backend`.

    sha256: the file's digest when the caller has it (a reused file was hashed just before it was
    placed); None hashes the file. calibration_sha256: the build's calibration, recorded on
    quantized artifacts only.
    """
    path = folder / file
    if spec.component == "dit" and config.sampler.kind == "dpmpp-2s":
        details = {**details, "guidance_batch": dpmpp_note(spec.batch)}
    cost = forward_cost(
        config, spec.component, spec.batch, spec.frames, spec.budget, spec.precision
    )
    weight_bytes = cost.weight_bytes
    if spec.quantization is not None:
        from export.quant_onnx import quantized_weight_elements

        # forward_cost counts every weight at `precision`; FP8/INT8 weights are 1 byte.
        itemsize = torch_dtype(spec.precision).itemsize
        weight_bytes -= (itemsize - 1) * quantized_weight_elements(spec.module)
    return Artifact(
        component=spec.component,
        backend=backend,
        file=file,
        sha256=sha256 or sha256_file(path),
        size_bytes=path.stat().st_size,
        precision=spec.precision,
        inputs=tensor_infos(spec.inputs),
        outputs=tensor_infos(spec.outputs),
        batch=spec.batch,
        frames=spec.frames,
        budget=spec.budget,
        flops=cost.flops,
        weight_bytes=weight_bytes,
        build=details,
        quantization=spec.quantization,
        calibration_sha256=calibration_sha256 if spec.quantization else None,
    )


def dpmpp_note(rows: int) -> dict:
    """What a dpmpp-2s DiT artifact's batch holds: CFG++'s two passes of rows / 2 takes."""
    return {
        "takes": rows // 2,
        "rows": rows,
        "why": "dpmpp-2s: the conditional and unconditional pass of each take in one call",
    }


def tensor_infos(tensors: tuple[TensorSpec, ...]) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(t.name, t.dtype_name, t.shape) for t in tensors)


def sampler_defaults(config: PrestoConfig) -> SamplerDefaults:
    """The preset's sampler with its Karras sigmas and the DiT budget of every step."""
    s, edm = config.sampler, config.edm
    sigmas = karras_sigmas(s.num_steps, edm.sigma_min, edm.sigma_max, s.rho)
    return SamplerDefaults(
        kind=s.kind,
        num_steps=s.num_steps,
        rho=s.rho,
        sigma_min=edm.sigma_min,
        sigma_max=edm.sigma_max,
        sigma_data=edm.sigma_data,
        sigmas=tuple(sigmas),
        step_budgets=tuple(s.budgets.budget_for_sigma(x) for x in sigmas),
        budgets=s.budgets.budgets,
        sigma_thresholds=s.budgets.sigma_thresholds,
        cfg_scale=s.cfg_scale,
    )


def build_env(plan: BuildPlan, trt: ModuleType | None, source: dict | None = None) -> dict:
    """Versions and targets of the build: Python, torch, onnx, opset, TensorRT, the CUDA device.

    trt: the module the build imported for plan.trt_flavor (None without engines). source: the
    preset or checkpoint and options it was built from (`build_folder`'s), kept under "source" so
    the runtime can print the command that rebuilds it (`runtime.hints`).
    """
    import onnx

    from export.onnx_export import OPSET

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "platform": platform.platform(),
        "onnx_opset": OPSET,
    }
    if plan.trt_flavor:
        env["tensorrt"] = {
            "flavor": plan.trt_flavor,
            "version": trt.__version__,
            "compute_capabilities": list(plan.compute_capabilities),
        }
    if "torch" in plan.backends and plan.device.startswith("cuda"):
        env["cuda_device"] = torch.cuda.get_device_name(plan.device)
        env["cuda_capability"] = ".".join(map(str, torch.cuda.get_device_capability(plan.device)))
    if source is not None:
        env["source"] = source
    return env


def make_manifest(
    config: PrestoConfig,
    artifacts: list[Artifact],
    plan: BuildPlan,
    trt: ModuleType | None,
    source: dict | None = None,
) -> Manifest:
    """The manifest of a build of `config` holding `artifacts`; source: see `build_env`."""
    return Manifest(
        schema_version=SCHEMA_VERSION,
        toolkit_version=TOOLKIT_VERSION,
        model_name=config.name,
        config=config.to_dict(),
        config_hash=config.config_hash(),
        sample_rate=config.sample_rate,
        hop_length=config.hop_length,
        latent_channels=config.dit.latent_channels,
        max_tokens=config.text.max_tokens,
        tokenizer=config.text.tokenizer,
        bpm_range=tuple(config.bpm_range),
        max_duration_s=config.max_duration_s,
        sampler=sampler_defaults(config),
        artifacts=tuple(artifacts),
        build_env=build_env(plan, trt, source),
    )
