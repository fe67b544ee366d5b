"""The plan of a build: `build_folder`'s options (or the CLI's flags) checked against the model and
resolved into one frozen `BuildPlan`, before anything is loaded onto a device or written.

Defaults that depend on the machine or the model are filled here: the backends this machine can
build, the full TensorRT flavor where it is importable (else TensorRT-RTX for sm_80), the longest
duration the model takes and the budgets of its sampler schedule.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from export.quant_scales import FP8_MIN_CAPABILITY, read_summary
from export.spec import check_buckets
from export.trt_build import DEFAULT_RTX_COMPUTE_CAPABILITIES, TRT_FLAVORS
from presto_common.errors import ArtifactError, BackendUnavailable, ConfigError
from presto_common.names import BACKENDS, PRECISIONS, QUANTIZATIONS
from presto_ref.config import PrestoConfig


@dataclass(frozen=True)
class BuildPlan:
    """The resolved options of one build."""

    backends: tuple[str, ...]  # in BACKENDS order; "onnx" is added when "tensorrt" is asked for
    precision: str  # one of PRECISIONS, for every graph
    batch_sizes: tuple[int, ...]  # takes B per bucket (a dpmpp-2s DiT is built at 2B rows)
    frames: tuple[int, ...]  # latent frames per bucket, ascending
    budgets: tuple[int, ...]  # DiT budgets (blocks dropped), ascending
    trt_flavor: str | None  # "tensorrt" or "rtx" when engines are built, else None
    compute_capabilities: tuple[str, ...]  # TensorRT-RTX ahead-of-time targets ("8.0"); else ()
    device: str  # where the torch packages are compiled and must run: "cpu" or "cuda[:N]"
    verify: bool  # check each ONNX file against the reference on ONNX Runtime (CPU)
    reuse_from: tuple[Path, ...] = ()  # other build folders whose matching artifacts are taken
    quantization: str | None = None  # "fp8" or "int8": the DiT's GEMMs, from `calibration`
    calibration: Path | None = None  # a calibration folder (python -m calibration.calibrate)
    calibration_sha256: str | None = None  # its scales file's sha256, as its summary records it
    fp8_attention: bool = False  # the torch packages' FP8 DiT attends in FP8 (export/fp8_sdpa.py)


def available_backends() -> tuple[str, ...]:
    """What this machine can build: ONNX always; TensorRT or TensorRT-RTX if installed; torch."""
    trt_modules = ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")
    have_trt = any(importlib.util.find_spec(m) for m in trt_modules)
    return tuple(b for b in BACKENDS if b != "tensorrt" or have_trt)


def plan_build(
    config: PrestoConfig,
    *,
    backends: Sequence[str] | None = None,
    precision: str = "fp32",
    batch_sizes: Sequence[int] = (1,),
    durations_s: Sequence[float] | None = None,
    budgets: Sequence[int] | None = None,
    trt: str | None = None,
    compute_capabilities: Sequence[str] = (),
    device: str = "cpu",
    verify: bool = True,
    reuse_from: Sequence[str | Path] = (),
    quantization: str | None = None,
    calibration: str | Path | None = None,
    fp8_attention: bool = False,
) -> BuildPlan:
    """Check every option against `config` and this machine; fill the defaults.

    quantization ("fp8" or "int8") and calibration (a folder of `python -m calibration.calibrate`
    for this config, at that precision, covering the budgets) come together; only the calibration's
    summary is read here. fp8_attention (with quantization "fp8" and the torch backend): the torch
    packages' DiT computes its attention in FP8 too (export/fp8_sdpa.py), from the calibration's
    attention ranges; on CUDA it needs cudnn-frontend.

    Raises ConfigError for a value the model or the options do not allow, ArtifactError for a
    calibration folder that cannot be used, BackendUnavailable for CUDA asked for where there is
    none; each names the value, what was expected and the fix.
    """
    # 1. Backends: onnx before the engines built from it.
    asked = _items("backends", backends, str) if backends is not None else available_backends()
    unknown = sorted(set(asked) - set(BACKENDS))
    if unknown or not asked:
        wrong = f"backends {list(asked)} has unknown {unknown}" if unknown else "backends is empty"
        raise ConfigError(
            f"{wrong}; choose from {','.join(BACKENDS)} (e.g. --backends onnx,tensorrt)"
        )
    if "tensorrt" in asked:
        asked = ("onnx", *asked)  # engines are built from the ONNX files
    chosen = tuple(b for b in BACKENDS if b in asked)
    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision {precision!r} is unknown; choose from {', '.join(PRECISIONS)}"
        )

    # 2. Buckets: durations to whole latent frames, then every bucket checked against the model.
    durations = (
        (config.max_duration_s,)
        if durations_s is None
        else _items("durations_s", durations_s, float)
    )
    for d in durations:
        if not (math.isfinite(d) and 0 < d <= config.max_duration_s):
            raise ConfigError(
                f"duration bucket {d:g} s is outside what {config.name} takes: "
                f"(0, {config.max_duration_s:g}] s"
            )
    frames = tuple(sorted({config.frames_for_duration(d) for d in durations}))
    batches = tuple(dict.fromkeys(_items("batch_sizes", batch_sizes, int)))  # unique, in order
    chosen_budgets = (
        config.sampler.budgets.distinct_budgets
        if budgets is None
        else tuple(sorted(set(_items("budgets", budgets, int))))
    )
    check_buckets(config, batches, frames, chosen_budgets)

    # 3. TensorRT flavor and targets.
    flavor = None
    if trt is not None and trt not in TRT_FLAVORS:
        raise ConfigError(f"trt={trt!r} is not a TensorRT flavor; choose from {TRT_FLAVORS}")
    if "tensorrt" in chosen:
        flavor = trt or ("tensorrt" if importlib.util.find_spec("tensorrt") else "rtx")
    ccs = _items("compute_capabilities", compute_capabilities, str)
    if ccs and flavor != "rtx":
        raise ConfigError(
            f"compute capabilities {list(ccs)} are for TensorRT-RTX engines (--trt rtx with "
            "--backends tensorrt); full TensorRT builds for the GPU it runs on"
        )
    if flavor == "rtx" and not ccs:
        ccs = DEFAULT_RTX_COMPUTE_CAPABILITIES

    # 4. Quantization of the DiT.
    calibration_sha256 = None
    if quantization is not None or calibration is not None:
        calibration, calibration_sha256 = _check_quantization(
            config, quantization, calibration, chosen_budgets
        )
        if quantization == "fp8" and flavor == "rtx":
            low = [cc for cc in ccs if _capability(cc) < FP8_MIN_CAPABILITY]
            if low:
                raise ConfigError(
                    f"--quantization fp8 with --compute-capabilities {','.join(ccs)}: FP8 needs "
                    f"8.9 or later (Ada, Hopper, Blackwell), {low[0]} has none; drop "
                    f"{','.join(low)}, or use --quantization int8 for 8.0"
                )

    # 5. Where the torch packages are compiled.
    if "torch" in chosen and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(
            f"device {device!r} asked for, but CUDA is not available; use --device cpu"
        )
    # 6. FP8 on the GPUs that build for themselves: full TensorRT and CUDA torch packages.
    if quantization == "fp8":
        gpus = []
        if flavor == "tensorrt" and torch.cuda.is_available():
            gpus.append(("--trt tensorrt", torch.cuda.current_device()))
        if "torch" in chosen and str(device).startswith("cuda"):
            gpus.append((f"--device {device}", torch.device(device)))
        for flag, gpu in gpus:
            cc = torch.cuda.get_device_capability(gpu)
            if cc < FP8_MIN_CAPABILITY:
                raise ConfigError(
                    f"--quantization fp8 with {flag}: this GPU, {torch.cuda.get_device_name(gpu)}, "
                    f"has compute capability {cc[0]}.{cc[1]} and FP8 needs 8.9 or later; use "
                    "--quantization int8, or build on an Ada, Hopper or Blackwell GPU"
                )
    if fp8_attention:
        _check_fp8_attention(chosen, quantization, calibration, chosen_budgets, device)
    return BuildPlan(
        backends=chosen,
        precision=precision,
        batch_sizes=batches,
        frames=frames,
        budgets=chosen_budgets,
        trt_flavor=flavor,
        compute_capabilities=ccs,
        device=str(device),
        verify=bool(verify),
        reuse_from=tuple(Path(p) for p in _items("reuse_from", reuse_from, (str, Path))),
        quantization=quantization,
        calibration=calibration,
        calibration_sha256=calibration_sha256,
        fp8_attention=bool(fp8_attention),
    )


def _check_fp8_attention(
    backends: tuple[str, ...],
    quantization: str | None,
    calibration: Path | None,
    budgets: tuple[int, ...],
    device: str,
) -> None:
    """ConfigError, ArtifactError or BackendUnavailable unless FP8 attention can be built."""
    if quantization != "fp8":
        given = f"with --quantization {quantization}" if quantization else "without --quantization"
        raise ConfigError(
            f"--fp8-attention {given}: FP8 attention feeds the FP8 "
            "output projection and uses an fp8 calibration's ranges; add --quantization fp8 "
            "--calibration DIR, or drop --fp8-attention"
        )
    if "torch" not in backends:
        raise ConfigError(
            f"--fp8-attention with --backends {','.join(backends)}: only the torch packages run "
            "FP8 attention (the Q/DQ ONNX graph keeps its bf16 attention); add torch to --backends"
        )
    summary = read_summary(calibration)
    entries = summary.get("budgets") or {}
    missing = [b for b in budgets if not (entries.get(str(b)) or {}).get("attention")]
    if missing:
        raise ArtifactError(
            f"--calibration {calibration} has no attention ranges for budget {missing[0]} (it "
            "was calibrated before they were recorded); calibrate again with `python -m "
            "calibration.calibrate --precision fp8`, or drop --fp8-attention"
        )
    if str(device).startswith("cuda"):
        from runtime.fp8_attention import import_cudnn_frontend

        import_cudnn_frontend()  # BackendUnavailable with the pip line


def _capability(text: str) -> tuple[int, int]:
    """'8.9' -> (8, 9); ConfigError for anything else."""
    major, _, minor = str(text).partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ConfigError(f"compute capability {text!r} is not of the form 8.9")
    return int(major), int(minor)


def _check_quantization(
    config: PrestoConfig,
    quantization: str | None,
    calibration: str | Path | None,
    budgets: tuple[int, ...],
) -> tuple[Path, str]:
    """The calibration folder and its scales' sha256, once its summary is found to fit."""
    make = "python -m calibration.calibrate"
    if quantization is None:
        raise ConfigError(
            f"--calibration {calibration} was given without --quantization; add --quantization "
            f"{'|'.join(QUANTIZATIONS)} (the calibration's precision), or drop --calibration"
        )
    if quantization not in QUANTIZATIONS:
        raise ConfigError(
            f"--quantization {quantization!r} is unknown; choose from {', '.join(QUANTIZATIONS)}"
        )
    if calibration is None:
        raise ConfigError(
            f"--quantization {quantization} needs --calibration DIR, a folder written by "
            f"`{make} --precision {quantization}` for this model"
        )
    if not isinstance(calibration, (str, Path)):
        raise ConfigError(f"calibration={calibration!r} must be a folder path (str or Path)")
    folder = Path(calibration)
    summary = read_summary(folder)  # ArtifactError if it is not a calibration folder
    found = summary.get("precision")
    if found != quantization:
        raise ConfigError(
            f"--quantization {quantization} with --calibration {folder}, which is calibrated for "
            f"{found}: pass --quantization {found}, or calibrate for {quantization} with "
            f"`{make} --precision {quantization}`"
        )
    want = config.config_hash()
    if summary.get("config_hash") != want:
        raise ArtifactError(
            f"--calibration {folder} is of config {str(summary.get('config_hash'))[:12]}, the "
            f"model is {config.name} ({want[:12]}); calibrate this model with `{make}` (same "
            "--preset or --checkpoint)"
        )
    calibrated = sorted(int(b) for b in summary.get("budgets") or {})
    missing = [b for b in budgets if b not in calibrated]
    if missing:
        raise ConfigError(
            f"budget {missing[0]} is not in --calibration {folder} (calibrated: {calibrated}); "
            f"build --budgets {','.join(map(str, calibrated))} or calibrate a schedule using it"
        )
    if not summary.get("scales_sha256"):
        raise ArtifactError(
            f"--calibration {folder}: its summary has no scales_sha256 (an unfinished or edited "
            f"calibration); calibrate again with `{make}`"
        )
    return folder, str(summary["scales_sha256"])


def _items(name: str, value: object, kind: type | tuple[type, ...]) -> tuple:
    """`value` as a tuple of `kind` (ints pass as floats); ConfigError naming it otherwise."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds:
        kinds = (*kinds, int)
    if isinstance(value, str) or not isinstance(value, (Sequence, set, frozenset)):
        raise ConfigError(
            f"{name}={value!r} must be a list or tuple of {' or '.join(k.__name__ for k in kinds)}"
        )
    items = tuple(value)
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, kinds)]
    if bad:
        raise ConfigError(
            f"{name}={value!r} holds {bad[0]!r}; expected {' or '.join(k.__name__ for k in kinds)}"
        )
    return items
