"""Build deployable artifacts from a checkpoint (or a preset's seeded random init).

For every component (text encoder, DiT once per layer budget, VAE decoder, mono-to-stereo) and
every (batch, duration) bucket: an ONNX file, a TensorRT or TensorRT-RTX engine built from it, and a
PyTorch AOTInductor package, plus `manifest.json`, which describes them all. Everything is written
into a temporary folder and moved into place at the end; artifacts of an earlier build in --out (or in
a --reuse-from folder) whose inputs, weights included, did not change are reused.

examples:
  python -m export.build --preset tiny --out artifacts/tiny
  python -m export.build --preset presto-ls --precision bf16 --backends onnx,tensorrt --trt rtx \\
      --compute-capabilities 8.0,8.6 --no-verify --out artifacts/presto-ls-bf16
  python -m export.build --checkpoint ckpt/ --backends torch --device cuda --precision bf16 \\
      --batch-sizes 1,4 --durations-s 10,32 --out artifacts/mine
  # buckets built apart (separate jobs or machines with the same GPU), then assembled by hard links;
  # builds sharing one GPU autotune under contention and come out slower (README)
  python -m export.build --backends torch --device cuda --batch-sizes 32 --out artifacts/b32
  python -m export.build --backends torch --device cuda --batch-sizes 1,32 --out artifacts/b1 \\
      --reuse-from artifacts/b32
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from export.spec import ExportSpec, make_specs
from presto_common.cli import add_logging_flags, run_main, setup_logging
from presto_common.errors import (
    BackendUnavailable,
    ConfigError,
    EngineBuildError,
    PrestoError,
)
from presto_common.names import BACKENDS, PRECISIONS, TOOLKIT_VERSION
from presto_common.schedule import karras_sigmas
from presto_ref.checkpoint import load_checkpoint, random_model
from presto_ref.pipeline import Presto
from presto_ref.presets import DEFAULT_PRESET, PRESETS, get_preset
from runtime.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Artifact,
    Manifest,
    SamplerDefaults,
    TensorInfo,
    sha256_file,
)

log = logging.getLogger("export.build")

TIMING_CACHE = "timing.cache"  # full TensorRT's tactic timings, kept in the build folder
# Parity of an fp32 ONNX graph on ONNX Runtime's CPU provider against eager PyTorch: both compute in
# fp32 with other summation orders, which gives relative L2 errors near 1e-6; 1e-4 flags real bugs.
FP32_PARITY_BOUND = 1e-4


@dataclass
class BuildPlan:
    """The resolved options of one build."""

    backends: tuple[str, ...]
    precision: str
    batch_sizes: tuple[int, ...]
    frames: tuple[int, ...]
    budgets: tuple[int, ...] | None
    trt_flavor: str | None
    compute_capabilities: tuple[str, ...]
    device: str
    verify: bool
    reuse_from: tuple[Path, ...] = ()  # other build folders whose matching artifacts are taken
    rows: list[dict] = field(default_factory=list)  # the summary table


# --- command line --------------------------------------------------------------------------------


def parse_list(text: str, kind: type) -> tuple:
    """'1,4' -> (1, 4); raises ConfigError naming the bad item."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(kind(t) for t in items)
    except ValueError:
        raise ConfigError(
            f"cannot read {text!r} as a comma-separated list of {kind.__name__}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--preset",
        metavar="NAME",
        help=f"random-init preset, one of {sorted(PRESETS)} (default {DEFAULT_PRESET})",
    )
    src.add_argument("--checkpoint", type=Path, metavar="DIR", help="checkpoint directory")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="build folder (default artifacts/<model>)"
    )
    p.add_argument(
        "--backends",
        metavar="LIST",
        help="comma-separated from onnx,tensorrt,torch (default: all this machine can build)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="weights and activations of every graph (fp32 islands stay) (default fp32)",
    )
    p.add_argument(
        "--batch-sizes", default="1", metavar="LIST", help="static batch buckets (default 1)"
    )
    p.add_argument(
        "--durations-s",
        metavar="LIST",
        help="duration buckets in seconds, rounded to whole frames (default: the max)",
    )
    p.add_argument(
        "--budgets",
        metavar="LIST",
        help="DiT budgets to build (default: every budget of the sampler schedule)",
    )
    p.add_argument(
        "--trt",
        choices=("tensorrt", "rtx"),
        help="TensorRT flavor (default: tensorrt where importable, else rtx)",
    )
    p.add_argument(
        "--compute-capabilities",
        metavar="LIST",
        help="RTX ahead-of-time targets, e.g. 8.0,8.6,8.9,12.0 (default 8.0)",
    )
    p.add_argument("--device", default="cpu", help="device the torch packages are compiled for")
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="check each ONNX file against the reference on ONNX Runtime (CPU)",
    )
    p.add_argument(
        "--init-seed", type=int, default=0, help="seed of the random init without --checkpoint"
    )
    p.add_argument(
        "--reuse-from",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="another build folder to take matching artifacts from instead of rebuilding them "
        "(repeatable; e.g. buckets built in parallel)",
    )
    add_logging_flags(p)
    return p


def available_backends() -> tuple[str, ...]:
    """What this machine can build: ONNX always; TensorRT or TensorRT-RTX if installed; torch."""
    have = ["onnx"]
    if any(
        importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")
    ):
        have.append("tensorrt")
    have.append("torch")
    return tuple(have)


def resolve_plan(args: argparse.Namespace, model: Presto) -> BuildPlan:
    cfg = model.config
    backends = parse_list(args.backends, str) if args.backends else available_backends()
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ConfigError(f"--backends has unknown {unknown}; choose from {','.join(BACKENDS)}")
    if "tensorrt" in backends and "onnx" not in backends:
        backends = ("onnx", *backends)  # engines are built from the ONNX files
    backends = tuple(b for b in BACKENDS if b in backends)
    durations = parse_list(args.durations_s, float) if args.durations_s else (cfg.max_duration_s,)
    for d in durations:
        if not 0 < d <= cfg.max_duration_s:
            raise ConfigError(
                f"duration bucket {d:g} s is outside what {cfg.name} takes: (0, {cfg.max_duration_s:g}] s"
            )
    flavor = None
    if "tensorrt" in backends:
        flavor = args.trt or ("tensorrt" if importlib.util.find_spec("tensorrt") else "rtx")
    ccs = parse_list(args.compute_capabilities, str) if args.compute_capabilities else ()
    if ccs and flavor != "rtx":
        raise ConfigError(
            "--compute-capabilities is for --trt rtx; full TensorRT builds for this GPU"
        )
    if flavor == "rtx" and not ccs:
        ccs = ("8.0",)
    device = args.device
    if "torch" in backends and device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(
            f"--device {device} asked for, but CUDA is not available; use --device cpu"
        )
    return BuildPlan(
        backends=tuple(backends),
        precision=args.precision,
        batch_sizes=parse_list(args.batch_sizes, int),
        frames=tuple(sorted({cfg.frames_for_duration(d) for d in durations})),
        budgets=parse_list(args.budgets, int) if args.budgets else None,
        trt_flavor=flavor,
        compute_capabilities=ccs,
        device=device,
        verify=args.verify,
        reuse_from=tuple(args.reuse_from),
    )


# --- reuse of an earlier build ---------------------------------------------------------------------


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


def reusable(
    sources: list[tuple[Manifest, Path]], key: tuple, sig: dict
) -> tuple[Artifact, Path] | None:
    """The first (artifact, its folder) among `sources` with this key and signature, file intact."""
    for manifest, folder in sources:
        for art in manifest.artifacts:
            if art.key == key and art.build.get("signature") == sig:
                path = folder / art.file
                if path.is_file() and sha256_file(path) == art.sha256:
                    return art, folder
    return None


def place(src: Path, dst: Path) -> None:
    """Hard-link src to dst (instant for multi-GB packages), or copy it across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def reuse_sources(out: Path, others: tuple[Path, ...]) -> list[tuple[Manifest, Path]]:
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
    if not (out / MANIFEST_FILE).is_file():
        return None
    try:
        return Manifest.load(out)
    except PrestoError as err:  # an older or broken folder: rebuild everything, say so once
        log.warning("not reusing %s: %s", out, err)
        return None


# --- one artifact --------------------------------------------------------------------------------


def tensor_infos(tensors) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(t.name, t.dtype_name, t.shape) for t in tensors)


def build_one(
    spec: ExportSpec,
    backend: str,
    plan: BuildPlan,
    model: Presto,
    tmp: Path,
    onnx_files: dict[str, Path],
) -> tuple[str, dict]:
    """Build `spec` for `backend` into `tmp`; returns (file name, build details)."""
    if backend == "onnx":
        from export.onnx_export import export_onnx
        from export.verify import check_onnx

        result = export_onnx(spec, tmp / f"{spec.name}.onnx")
        onnx_files[spec.name] = result.path
        details: dict = {"build_s": round(result.export_s, 3), "opset": result.opset}
        if result.data_path is not None:
            details["external_data"] = {
                "file": result.data_path.name,
                "sha256": sha256_file(result.data_path),
            }
        if plan.verify:
            parity = check_onnx(model, spec, result.path)
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
    if backend == "tensorrt":
        from export.trt_build import build_engine

        name = f"{spec.name}.plan"
        result = build_engine(
            onnx_files[spec.name],
            tmp / name,
            flavor=plan.trt_flavor,
            compute_capabilities=list(plan.compute_capabilities) or None,
            # Full TensorRT keeps its tactic timings between builds; RTX has no timing cache.
            timing_cache=tmp / TIMING_CACHE if plan.trt_flavor == "tensorrt" else None,
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
    if backend == "torch":
        from export.torch_backend import compile_package

        name = f"{spec.name}-{plan.device.replace(':', '')}.pt2"
        from export.conv_layout import CONV2D_INDUCTOR_OPTIONS, conv1d_as_conv2d

        module = spec.module.to(plan.device)
        # On CUDA, 1-D convolutions run as channels-last 2-D ones (export/conv_layout.py).
        swap = conv1d_as_conv2d(module) if plan.device.startswith("cuda") else nullcontext(0)
        with swap as swapped:
            result = compile_package(
                module,
                spec.sample_inputs(device=plan.device),
                tmp / name,
                device=plan.device,
                options=CONV2D_INDUCTOR_OPTIONS if swapped else None,
            )
        spec.module.to("cpu")
        return name, {
            "build_s": round(result.build_s, 3),
            "device": plan.device,
            "torch_version": result.torch_version,
        }
    raise ConfigError(f"unknown backend {backend!r}")


# --- the whole build -----------------------------------------------------------------------------


def sampler_defaults(model: Presto) -> SamplerDefaults:
    cfg = model.config
    s = cfg.sampler
    sigmas = karras_sigmas(s.num_steps, cfg.edm.sigma_min, cfg.edm.sigma_max, s.rho)
    return SamplerDefaults(
        kind=s.kind,
        num_steps=s.num_steps,
        rho=s.rho,
        sigma_min=cfg.edm.sigma_min,
        sigma_max=cfg.edm.sigma_max,
        sigma_data=cfg.edm.sigma_data,
        sigmas=tuple(sigmas),
        step_budgets=tuple(s.budgets.budget_for_sigma(x) for x in sigmas),
        budgets=s.budgets.budgets,
        sigma_thresholds=s.budgets.sigma_thresholds,
        cfg_scale=s.cfg_scale,
    )


def build_env(plan: BuildPlan) -> dict:
    import onnx

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "platform": platform.platform(),
    }
    from export.onnx_export import OPSET

    env["onnx_opset"] = OPSET
    if plan.trt_flavor:
        from export.trt_build import import_tensorrt

        env["tensorrt"] = {
            "flavor": plan.trt_flavor,
            "version": import_tensorrt(plan.trt_flavor).__version__,
            "compute_capabilities": list(plan.compute_capabilities),
        }
    if "torch" in plan.backends and plan.device.startswith("cuda"):
        env["cuda_device"] = torch.cuda.get_device_name(plan.device)
        env["cuda_capability"] = ".".join(map(str, torch.cuda.get_device_capability(plan.device)))
    return env


def quiet_polygraphy(verbose: bool) -> None:
    """Polygraphy logs every pass and the whole network at INFO; keep its warnings only."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.WARNING


def build(model: Presto, plan: BuildPlan, out: Path) -> Manifest:
    """Build every artifact of `plan` and write `out` (replacing it at the very end)."""
    if plan.trt_flavor:
        # Choose Polygraphy's TensorRT module before the ONNX export imports Polygraphy.
        from export.trt_build import import_tensorrt

        import_tensorrt(plan.trt_flavor)
    quiet_polygraphy(log.isEnabledFor(logging.DEBUG))
    cfg = model.config
    specs = make_specs(model, plan.precision, plan.batch_sizes, plan.frames, plan.budgets)
    sources = reuse_sources(out, plan.reuse_from)
    weights = weights_digest(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the finished folder is an ordinary one
    artifacts: list[Artifact] = []
    onnx_files: dict[str, Path] = {}
    try:
        if plan.trt_flavor == "tensorrt" and (out / TIMING_CACHE).is_file():
            shutil.copy2(out / TIMING_CACHE, tmp / TIMING_CACHE)  # carried to the next build
        steps = [(s, b) for s in specs for b in plan.backends]  # ONNX before the engines made of it
        for i, (spec, backend) in enumerate(steps, 1):
            key = (spec.component, backend, spec.precision, spec.budget, spec.batch, spec.frames)
            sig = signature(plan, backend, cfg.config_hash(), weights)
            found = reusable(sources, key, sig)
            prev = None
            start = time.perf_counter()
            if found is not None:
                prev, folder = found
                for name in [prev.file] + (
                    [prev.build["external_data"]["file"]] if "external_data" in prev.build else []
                ):
                    place(folder / name, tmp / name)
                if backend == "onnx":
                    onnx_files[spec.name] = tmp / prev.file
                file, details, reused = prev.file, dict(prev.build), True
            else:
                file, details = build_one(spec, backend, plan, model, tmp, onnx_files)
                details["signature"], reused = sig, False
            path = tmp / file
            art = Artifact(
                component=spec.component,
                backend=backend,
                file=file,
                # A reused file was hashed by `reusable` just before it was copied.
                sha256=prev.sha256 if prev is not None else sha256_file(path),
                size_bytes=path.stat().st_size,
                precision=spec.precision,
                inputs=tensor_infos(spec.inputs),
                outputs=tensor_infos(spec.outputs),
                batch=spec.batch,
                frames=spec.frames,
                budget=spec.budget,
                build=details,
            )
            artifacts.append(art)
            took = time.perf_counter() - start
            log.info(
                "[%d/%d] %-28s %-8s %s in %.1f s",
                i,
                len(steps),
                spec.name,
                backend,
                "reused" if reused else "built",
                took,
            )
            plan.rows.append(
                {
                    "name": spec.name,
                    "component": spec.component,
                    "budget": spec.budget,
                    "backend": backend,
                    "precision": spec.precision,
                    "bucket": f"{spec.batch}x{spec.frames}" if spec.frames else f"{spec.batch}",
                    "size_mb": art.size_bytes / 1e6,
                    "build_s": details.get("build_s", took),
                    "reused": reused,
                    "parity": details.get("parity"),
                }
            )
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            toolkit_version=TOOLKIT_VERSION,
            model_name=cfg.name,
            config=cfg.to_dict(),
            config_hash=cfg.config_hash(),
            sample_rate=cfg.sample_rate,
            hop_length=cfg.hop_length,
            latent_channels=cfg.dit.latent_channels,
            max_tokens=cfg.text.max_tokens,
            tokenizer=cfg.text.tokenizer,
            bpm_range=tuple(cfg.bpm_range),
            max_duration_s=cfg.max_duration_s,
            sampler=sampler_defaults(model),
            artifacts=tuple(artifacts),
            build_env=build_env(plan),
        )
        (tmp / MANIFEST_FILE).write_text(manifest.to_json())
        # Swap the finished folder into place.
        if out.exists():
            backup = out.with_name(f".{out.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            out.rename(backup)
            tmp.rename(out)
            shutil.rmtree(backup)
        else:
            tmp.rename(out)
    except OSError as err:
        raise EngineBuildError(
            f"could not write the build to {out}: {err}; free disk space or choose another --out "
            f"(nothing was left behind)"
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def print_summary(rows: list[dict]) -> None:
    head = f"{'artifact':<30}{'backend':<10}{'precision':<10}{'size MB':>10}{'build s':>10}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        note = "reused" if r["reused"] else ""
        if r["parity"]:
            note += f" rel L2 {r['parity']['rel_l2']:.1e}, cos {r['parity']['cosine']:.6f}"
        print(
            f"{r['name']:<30}{r['backend']:<10}{r['precision']:<10}{r['size_mb']:>10.2f}"
            f"{r['build_s']:>10.1f}  {note.strip()}"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging(args)
    for noisy in ("torch.onnx", "torch._dynamo", "torch._inductor", "torch.export", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    outputs: list[Path] = []

    def body() -> list[Path]:
        # 1. The model, then the plan checked against it, before anything is written.
        if args.checkpoint:
            model = load_checkpoint(args.checkpoint)
        else:
            model = random_model(get_preset(args.preset or DEFAULT_PRESET), args.init_seed)
        model.eval()
        plan = resolve_plan(args, model)
        out = args.out or Path("artifacts") / model.config.name
        log.info(
            "building %s: backends %s, %s, batches %s, frames %s, into %s",
            model.config.name,
            ",".join(plan.backends),
            plan.precision,
            plan.batch_sizes,
            plan.frames,
            out,
        )
        # 2. Build.
        with torch.no_grad():
            manifest = build(model, plan, out)
        print_summary(plan.rows)
        print(
            json.dumps(
                {
                    "out": str(out),
                    "artifacts": len(manifest.artifacts),
                    "config_hash": manifest.config_hash,
                }
            )
        )
        outputs.append(out)
        return outputs

    return run_main(body, argv, {"preset": args.preset, "checkpoint": args.checkpoint})


if __name__ == "__main__":
    raise SystemExit(main())
