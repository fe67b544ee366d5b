"""Build a folder of artifacts from Python: `build_folder(out, preset="tiny", ...) -> Manifest`.

The steps: the model (a preset's seeded random init, a checkpoint, or a model object), the plan
checked against it, then for every spec and backend either an earlier build's matching artifact or
a fresh one, and the manifest last. Everything is written into a temporary sibling of `out` that
replaces `out` only once the build is complete, so a failed build leaves `out` as it was and no
half-written folder behind. `out` is checked first (`check_out`): a build never replaces a folder
that is not a build, nor a file. `python -m export.build` is a thin command line over `build_folder`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from export.assemble import artifact_record, make_manifest
from export.builders import BUILDERS, TIMING_CACHE, BuildContext
from export.plan import BuildPlan, plan_build
from export.reuse import (
    artifact_key,
    reusable,
    reuse_sources,
    signature,
    spec_signature,
    take,
    weights_digest,
)
from export.spec import make_specs
from presto_common.errors import ConfigError, EngineBuildError, OutputError
from presto_ref.checkpoint import load_checkpoint, random_model
from presto_ref.pipeline import Presto
from presto_ref.presets import DEFAULT_PRESET
from runtime.manifest import MANIFEST_FILE, Artifact, Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltArtifact:
    """One artifact as a build finished it (what `build_folder`'s on_artifact receives)."""

    name: str  # the spec's name, e.g. "dit-b4-fp32-1x92"
    artifact: Artifact  # its manifest entry
    reused: bool  # taken from an earlier build instead of built
    seconds: float  # wall time of building it, or of placing the reused file


def load_model(
    *, preset: str | None = None, checkpoint: str | Path | None = None, init_seed: int = 0
) -> Presto:
    """A checkpoint's model, or a preset's (default presto-ls) seeded random init; fp32 on the CPU."""
    if preset is not None and checkpoint is not None:
        raise ConfigError(
            f"preset={preset!r} and checkpoint={str(checkpoint)!r} both given; a build takes one "
            "model: pass --preset or --checkpoint"
        )
    if checkpoint is not None:
        return load_checkpoint(checkpoint).eval()
    return random_model(preset or DEFAULT_PRESET, init_seed).eval()


def build_folder(
    out: str | Path,
    *,
    preset: str | None = None,
    checkpoint: str | Path | None = None,
    model: Presto | None = None,
    init_seed: int = 0,
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
    on_artifact: Callable[[BuiltArtifact], None] | None = None,
    quantization: str | None = None,
    calibration: str | Path | None = None,
    fp8_attention: bool = False,
) -> Manifest:
    """Build every artifact of a model into `out` and return the manifest written there.

    The model: `model` (fp32, on the CPU), a `checkpoint` directory, or a `preset`'s random init
    from `init_seed` (presto-ls when none is given). backends: from "onnx", "tensorrt", "torch"
    (None: all this machine can build). batch_sizes: takes per bucket (a dpmpp-2s DiT is built
    at twice as many rows). durations_s: one bucket each, rounded to whole latent frames (None:
    the model's longest). budgets: DiT budgets (None: those of the sampler schedule). trt: "tensorrt"
    or "rtx" (None: tensorrt where importable); compute_capabilities: RTX targets (default 8.0).
    device: where torch packages are compiled. verify: check ONNX files on ONNX Runtime.
    reuse_from: other build folders to take matching artifacts from. on_artifact: called as each
    artifact is done. quantization ("fp8" or "int8") with calibration (a folder written by
    `python -m calibration.calibrate` for this model): the DiT's GEMMs quantized with its scales;
    everything else, the DiT's other operations included, stays at `precision`. fp8_attention
    (with quantization "fp8"): the torch packages' DiT attends in FP8 too (export/fp8_sdpa.py).

    `out` must be missing, an empty folder or an earlier build (a folder holding manifest.json);
    anything else is refused before the model is loaded (`check_out`).

    Raises a PrestoError subclass for anything the caller can fix (ConfigError for bad options,
    OutputError for an `out` that cannot be written, BackendUnavailable, CheckpointError,
    EngineBuildError); `out` is then left as it was unless the message says otherwise.
    """
    if not isinstance(out, (str, Path)):
        raise ConfigError(f"out={out!r} must be a folder path (str or pathlib.Path)")
    check_out(Path(out))
    if model is not None:
        if preset is not None or checkpoint is not None:
            raise ConfigError(
                "build_folder takes one model: `model`, `preset` or `checkpoint`; several were given"
            )
        if not isinstance(model, Presto):
            raise ConfigError(f"model is a {type(model).__name__}; pass a presto_ref Presto")
        dtype = next(model.parameters()).dtype
        if model.device.type != "cpu" or dtype != torch.float32:
            raise ConfigError(
                f"model is {dtype} on {model.device}; the build casts each graph to `precision` "
                "itself and checks it against the fp32 model on the CPU: pass model.float().cpu()"
            )
        source = {"preset": None, "checkpoint": None, "model": "a Presto passed to build_folder"}
    else:
        model = load_model(preset=preset, checkpoint=checkpoint, init_seed=init_seed)
        source = {
            "preset": None if checkpoint is not None else preset or DEFAULT_PRESET,
            "checkpoint": None if checkpoint is None else str(Path(checkpoint).absolute()),
        }
    plan = plan_build(
        model.config,
        backends=backends,
        precision=precision,
        batch_sizes=batch_sizes,
        durations_s=durations_s,
        budgets=budgets,
        trt=trt,
        compute_capabilities=compute_capabilities,
        device=device,
        verify=verify,
        reuse_from=reuse_from,
        quantization=quantization,
        calibration=calibration,
        fp8_attention=fp8_attention,
    )
    # How to build this again (runtime.hints turns it into a command): in build_env, no schema change.
    source |= {
        "init_seed": init_seed,
        "backends": list(plan.backends),
        "precision": plan.precision,
        "device": plan.device,
        "trt": plan.trt_flavor,
        "compute_capabilities": list(plan.compute_capabilities),
        "verify": plan.verify,
        "quantization": plan.quantization,
        "calibration": None if plan.calibration is None else str(plan.calibration.absolute()),
        "fp8_attention": plan.fp8_attention,
    }
    with torch.no_grad():
        return run_build(model.eval(), plan, Path(out), on_artifact, source)


def run_build(
    model: Presto,
    plan: BuildPlan,
    out: Path,
    on_artifact: Callable[[BuiltArtifact], None] | None = None,
    source: dict | None = None,
) -> Manifest:
    """Build (or reuse) every artifact of `plan` and write `out`, replacing it at the very end.

    source: the model and options the build came from, recorded as the manifest's
    build_env["source"] (None records none).
    """
    from export.trt_build import import_tensorrt

    config = model.config
    log.info(
        "building %s: backends %s, %s, batches %s%s, frames %s, budgets %s, into %s",
        config.name,
        ",".join(plan.backends),
        plan.precision,
        plan.batch_sizes,
        " (DiT at twice the rows: dpmpp-2s)" if config.sampler.kind == "dpmpp-2s" else "",
        plan.frames,
        plan.budgets,
        out,
    )
    # 1. TensorRT once per build, before the ONNX export imports Polygraphy (which binds to the
    # flavor that is imported first).
    trt = import_tensorrt(plan.trt_flavor) if plan.trt_flavor else None
    _quiet_polygraphy(log.isEnabledFor(logging.DEBUG))
    # 2. What to build, and what earlier builds can give.
    sources = reuse_sources(out, plan.reuse_from)
    calibration = None
    if plan.calibration is not None:
        from export.quant_scales import load_calibration

        calibration = load_calibration(plan.calibration)  # checks the scales' sha256
    specs = make_specs(
        model, plan.precision, plan.batch_sizes, plan.frames, plan.budgets, calibration=calibration
    )
    weights = weights_digest(model)
    sigs = {b: signature(plan, b, config.config_hash(), weights) for b in plan.backends}
    steps = [(s, b) for s in specs for b in plan.backends]  # ONNX before the engines made of it
    artifacts: list[Artifact] = []
    try:
        with _staging(out) as staging:
            ctx = BuildContext(
                plan=plan, reference=model, staging=staging, trt=trt, calibration=calibration
            )
            if plan.trt_flavor == "tensorrt" and (out / TIMING_CACHE).is_file():
                shutil.copy2(out / TIMING_CACHE, staging / TIMING_CACHE)  # carried to this build
            # 3. Each artifact: reuse or build.
            for i, (spec, backend) in enumerate(steps, 1):
                start = time.perf_counter()
                sig = spec_signature(sigs[backend], spec, plan, backend)
                found = reusable(sources, artifact_key(spec, backend), sig)
                if found is not None:
                    prev, folder = found
                    take(prev, folder, staging)
                    # `reusable` hashed the file just before it was placed.
                    art = artifact_record(
                        config,
                        spec,
                        backend,
                        staging,
                        prev.file,
                        dict(prev.build),
                        prev.sha256,
                        calibration_sha256=plan.calibration_sha256,
                    )
                else:
                    file, details = BUILDERS[backend](spec, ctx)
                    details["signature"] = sig
                    art = artifact_record(
                        config,
                        spec,
                        backend,
                        staging,
                        file,
                        details,
                        calibration_sha256=plan.calibration_sha256,
                    )
                artifacts.append(art)
                done = BuiltArtifact(spec.name, art, found is not None, time.perf_counter() - start)
                log.info(
                    "[%d/%d] %-28s %-8s %s in %.1f s",
                    i,
                    len(steps),
                    spec.name,
                    backend,
                    "reused" if done.reused else "built",
                    done.seconds,
                )
                if on_artifact is not None:
                    on_artifact(done)
            # 4. The manifest, then the folder swapped into place.
            manifest = make_manifest(config, artifacts, plan, trt, source)
            (staging / MANIFEST_FILE).write_text(manifest.to_json())
            _publish(staging, out)
    except OSError as err:
        raise EngineBuildError(
            f"could not write the build to {out}: {err}; free disk space or choose another --out "
            f"({out} is as it was)"
        ) from err
    return manifest


# --- the output folder ----------------------------------------------------------------------------


def check_out(out: Path) -> None:
    """Refuse an `out` that a build must not replace; nothing is created or changed.

    Allowed: a missing path under a writable folder, an empty folder, or a folder holding
    manifest.json (an earlier build, whatever its schema). Raises OutputError naming the path,
    what is there and the fix.
    """
    fix = "choose another --out (a new or empty folder, or an earlier build)"
    if out.name in ("", ".", ".."):
        raise OutputError(f"--out {out} names no folder of its own; {fix}")
    if out.is_symlink():
        raise OutputError(
            f"--out {out} is a symbolic link to {os.readlink(out)}; a build would replace the "
            f"link: pass the folder it points to as --out, or {fix}"
        )
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; a build would replace it: {fix}")
    if out.is_dir() and not (out / MANIFEST_FILE).is_file():
        entries = sorted(out.iterdir())
        if entries:
            shown = ", ".join(e.name + ("/" if e.is_dir() else "") for e in entries[:3])
            more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
            raise OutputError(
                f"--out {out} is not a build folder: it holds {shown}{more} and no "
                f"{MANIFEST_FILE}, and a build would replace it; {fix}, or empty it"
            )
    # The build writes a sibling of `out` and renames it: the nearest existing ancestor must be a
    # folder this process can write into.
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"--out {out} cannot be made: {parent} is a file, not a folder; {fix}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"--out {out} cannot be written: no write permission in {parent}; {fix}, or make "
            f"{parent} writable"
        )


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out`, removed on exit unless `_publish` has moved it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the finished folder is an ordinary one
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():
            log.warning("could not remove the unfinished build %s; delete it by hand", tmp)


def _publish(staging: Path, out: Path) -> None:
    """Swap the finished `staging` folder into `out`; an earlier build there is removed afterwards.

    `out` is checked again (it may have changed during the build). Raises OutputError saying where
    the earlier build is when a step of the swap fails.
    """
    check_out(out)
    if not out.exists():
        staging.rename(out)
        return
    if not (out / MANIFEST_FILE).is_file():  # an empty folder: rename() replaces it
        staging.rename(out)
        return
    # A fresh, empty backup name: rename() replaces the empty folder mkdtemp made.
    backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    try:
        out.rename(backup)
    except OSError as err:
        backup.rmdir()
        raise OutputError(
            f"could not move the earlier build {out} aside ({err}); it is unchanged and the new "
            f"build was discarded: check the permissions of {out.parent} or choose another --out"
        ) from err
    try:
        staging.rename(out)
    except OSError as err:
        try:
            backup.rename(out)
        except OSError:
            raise OutputError(
                f"could not move the new build into {out} ({err}), nor the earlier build back: "
                f"the earlier build is in {backup}; move it back with `mv {backup} {out}`"
            ) from err
        raise OutputError(
            f"could not move the new build into {out} ({err}); the earlier build is back in "
            f"{out} unchanged and the new build was discarded"
        ) from err
    shutil.rmtree(backup, ignore_errors=True)
    if backup.exists():
        log.warning(
            "the new build is in %s, but the earlier one is left in %s: delete it", out, backup
        )


def _quiet_polygraphy(verbose: bool) -> None:
    """Polygraphy logs every pass and the whole network at INFO; keep its warnings only."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.WARNING
