"""Latency per stage and end to end for several backends side by side, at batch 1 and the largest batch.

For each backend of --backends, at the build's longest batch-1 duration bucket (shared by all of
them): text encoding (uncached: new prompts every run), all DiT steps of the default schedule (each
at its budget, re-noising included), the VAE decoder, the mono-to-stereo model, and a whole
generation end to end, mono and stereo (new prompts, so text encoding is included). Each row gives
median, p90 and min (ms), the coefficient of variation (stdev / mean), the real-time factor
RTF = audio seconds / median seconds, the stage's FLOPs (benchmarks.flops), the achieved GFLOP/s, a
roofline floor, and on CUDA the stage's peak allocator memory. Timing uses CUDA events on a GPU,
perf_counter on the CPU, after --warmup discarded runs. Backends (benchmarks.backends):

    engines (default)  the build's auto backend, CUDA graph on CUDA
    torch, torch-nograph, onnxruntime, tensorrt    one engine backend of the build
    eager-fp32, eager-bf16    presto_ref's eager model from the manifest's config

After each backend's block, "x faster than <first backend>" gives, per stage, the first backend's
median over this one's at the same batch, both measured in this run.

Largest batch (--max-batch; on by default on CUDA, off on the CPU): eager models search it with one
stereo generation per trial, doubling from 1 up to --max-batch-limit and then bisecting, until one
fails with torch.cuda.OutOfMemoryError; engines have static buckets, so the largest built batch that
runs is taken (the JSON records that it was limited to the built buckets). Every stage is then timed
again at that batch (--max-batch-runs runs after --max-batch-warmup warm-ups: the search's last
successful trial already ran a whole generation at that batch), and throughput = batch x duration /
e2e stereo median, in audio s per s.

Per (backend, batch), on CUDA: peak memory of each stage (torch's caching allocator: absolute, and
above what was allocated before the stage; TensorRT's own activation memory is not seen), the
e2e-stereo peak as the whole pipeline's, and the kernel launches of one stereo generation from a
torch.profiler trace: launch API calls, CUDA graph launches and kernels run on the GPU.

Roofline, measured on the same device in the same run: the dense matmul rate (bf16 on CUDA, fp32 on
the CPU) and the copy bandwidth (bytes read + written). floor_ms = max(FLOPs / matmul rate,
weight bytes / bandwidth), where weight bytes are the engine files (or eager parameters) the stage
reads per call (activation traffic is not counted, so this is a lower bound);
pct_of_floor = 100 x floor_ms / median_ms.

Regression rule for --compare, per (backend, batch, stage), within runs of the same model, duration
and device type:
    median_new > median_base x (1 + max(5%, K x sqrt(cv_new^2 + cv_base^2)))
with K = --threshold-sigmas: the slowdown must exceed both 5% and K combined run-to-run spreads.
It prints one REGRESSION line per regressed stage and one line saying what it compared, and exits 1
on a regression, or when no row or not every timed stage found a baseline row (benchmarks.compare).

Caveat: the runtime caches each prompt's text tokens and every run uses new prompts, so the cache of
an engine backend grows during its text and end-to-end stages and counts in their memory peaks.

The last stdout line is one JSON document; --json PATH writes the same, environment included. The
--json file is rewritten (atomically) after every row and search, with "complete": false until the
run ends, so a run cut short keeps what it measured; --compare refuses such a file as a baseline.
    {model, complete, device, duration_s, frames, step_budgets, config_hash, runs, warmup, max_batch_runs,
     backends, roofline, max_batch: {backend: search} | null, environment: {gpu, gpu_driver, cuda,
     torch, tensorrt, onnxruntime, git_commit, manifest_sha256, ...},
     results: [{backend, kind, precision, cuda_graph, batch, batch_role, stages: {stage: row},
                peak_memory_mib, kernel_launches, throughput_audio_s_per_s, speedup}]}

With --preset NAME, export.build_folder first builds (or reuses, when nothing changed) what
--backends needs into --engines (default artifacts/NAME-DEVICE-PRECISION): torch packages for the
device, ONNX files for onnxruntime, TensorRT engines for tensorrt; --precision, --batch-sizes and
--durations-s choose the buckets (benchmarks.prepare).

examples:
  python -m benchmarks.latency --preset tiny --device cpu --runs 5
  python -m benchmarks.latency --engines /tmp/x --device cpu --runs 5
  python -m benchmarks.latency --engines artifacts/presto-ls --device cuda --json results.json \\
      --backends eager-fp32,eager-bf16,torch-nograph,torch --max-batch-runs 5
  python -m benchmarks.latency --engines artifacts/presto-ls --compare benchmarks/baselines/h100.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import flops as flops_mod
from benchmarks.backends import Backend, open_backend, parse_backends
from benchmarks.compare import compare, load_baseline
from benchmarks.environment import environment
from benchmarks.max_batch import (
    BatchSearch,
    double_then_bisect,
    fits_in_memory,
    largest_fitting,
    oom_count,
    ran_out_of_memory,
)
from benchmarks.measure import (
    Timer,
    device_memory_used_mib,
    kernel_launches,
    measure_device,
    peak_memory,
    prepare_profiler,
    time_fn,
)
from benchmarks.prepare import build_for
from benchmarks.report import format_report
from presto_common.errors import ArtifactError, InputError, PrestoError, ShapeError
from runtime.manifest import Manifest

log = logging.getLogger("benchmarks.latency")

STAGES = ("text_encoder", "dit_steps", "vae_decoder", "stereo", "e2e_mono", "e2e_stereo")


@dataclass
class Settings:
    """What every (backend, batch) block shares."""

    config: dict[str, Any]
    frames: int
    duration_s: float
    step_budgets: list[int]
    timer: Timer
    roofline: dict[str, float]
    runs: int
    warmup: int


# --- one backend at one batch ---------------------------------------------------------------------


def time_batch(backend: Backend, batch: int, s: Settings) -> dict[str, Any]:
    """Every stage of `backend` at `batch`: timing, roofline, memory; then launches and throughput."""
    dev = backend.device
    stages = backend.stages(batch, s.frames)
    stage_flops = flops_mod.pipeline_flops(s.config, batch, s.frames, s.step_budgets)
    rows = {}
    for name in STAGES:
        if name.startswith("e2e_"):
            # One chain's CUDA-graph pool at a time, and no blocks cached by the stages before: at
            # the largest batch a captured chain's pool alone takes most of the GPU.
            backend.release_graphs()
        log.info(
            "%s batch %d: %s (%d warm-up + %d runs)", backend.name, batch, name, s.warmup, s.runs
        )
        with peak_memory(dev) as mem:
            row = time_fn(s.timer, stages.calls[name], s.runs, s.warmup)
        f, size = stage_flops[name], stages.bytes_read[name]
        compute_ms = f / (s.roofline["matmul_gflops"] * 1e9) * 1e3
        memory_ms = size / (s.roofline["copy_gbps"] * 1e9) * 1e3
        floor_ms = max(compute_ms, memory_ms)
        row.update(
            rtf=s.duration_s / (row["median_ms"] * 1e-3),
            flops=f,
            gflops_per_s=f / (row["median_ms"] * 1e-3) / 1e9,
            weight_bytes=size,
            floor_ms=floor_ms,
            pct_of_floor=100 * floor_ms / row["median_ms"],
            **mem,
        )
        rows[name] = row
    del stages  # its inputs are not needed for the launch count
    if dev.type == "cuda":
        log.info(
            "%s batch %d: counting kernel launches of one stereo generation", backend.name, batch
        )
    launches = kernel_launches(lambda: backend.generate(batch, s.frames, stereo=True), dev)
    e2e = rows["e2e_stereo"]
    memory = None
    if dev.type == "cuda":
        memory = {
            "pipeline_peak_mib": e2e["peak_mib"],
            "pipeline_peak_above_start_mib": e2e["peak_above_start_mib"],
            "device_used_mib": device_memory_used_mib(dev),
        }
    return {
        "backend": backend.name,
        **backend.describe(),
        "batch": batch,
        "stages": rows,
        "peak_memory_mib": memory,
        "kernel_launches": launches,
        "throughput_audio_s_per_s": batch * s.duration_s / (e2e["median_ms"] * 1e-3),
    }


def find_max_batch(backend: Backend, frames: int, limit: int) -> BatchSearch:
    """The largest batch whose stereo generation fits (see benchmarks.max_batch)."""

    def fits(batch: int) -> bool:
        ok = fits_in_memory(lambda: backend.generate(batch, frames, stereo=True), backend.device)
        if not ok:
            backend.reset()  # no engine or half-captured graph of the failed trial survives
        return ok

    built = backend.batch_candidates(frames)
    if built is None:
        return double_then_bisect(fits, limit, backend.name)
    return largest_fitting(fits, [b for b in built if b <= limit] or built[:1], backend.name)


def time_largest(backend: Backend, found: BatchSearch, s: Settings) -> dict[str, Any] | None:
    """time_batch at the search's batch, stepping down through the batches that fitted (and the
    built buckets below) while timing runs out of memory; None when only batch 1 is left."""
    candidates = {t["batch"] for t in found.trials if t["fits"]}
    candidates |= set(backend.batch_candidates(s.frames) or ())
    while found.batch > 1:
        backend.reset()  # the last trial's graph and engines: see time_batch
        before = oom_count(backend.device)
        try:
            return time_batch(backend, found.batch, s)
        except Exception as err:
            if not ran_out_of_memory(err, before, backend.device):
                raise
        log.warning(
            "%s: timing every stage at batch %d ran out of memory; stepping down",
            backend.name,
            found.batch,
        )
        found.step_down(candidates)
    return None


# --- the whole run --------------------------------------------------------------------------------


def choose_frames(backends: list[Backend], manifest: Manifest) -> int:
    """The longest batch-1 bucket every engine backend has (any built one for eager-only runs)."""
    built = {b.name: b.batch1_frames() for b in backends if b.batch1_frames() is not None}
    if built:
        common = set.intersection(*(set(f) for f in built.values()))
        if not common:
            have = "; ".join(f"{name}: {sorted(f) or 'none'}" for name, f in built.items())
            raise ShapeError(
                f"the engine backends share no batch-1 duration bucket (latent frames: {have}); "
                f"rebuild them with the same `python -m export.build --durations-s` or benchmark "
                f"them in separate runs"
            )
        return max(common)
    dits = [a for a in manifest.artifacts if a.component == "dit"]
    frames = [a.frames for a in dits if a.batch == 1] or [a.frames for a in dits]
    if not frames:
        raise ArtifactError(
            "the build folder holds no DiT engine to take the benchmark duration from; rebuild "
            "with `python -m export.build`"
        )
    return max(frames)


def run_benchmark(
    engines: Path,
    backend_names: str,
    device: str | None,
    runs: int,
    warmup: int,
    max_batch: bool | None = None,
    max_batch_limit: int = 256,
    max_batch_runs: int | None = None,
    checkpoint: Path | None = None,
    init_seed: int = 0,
    max_batch_warmup: int = 1,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Time every backend at batch 1 and (when searched) at its largest batch; the JSON document.

    on_progress, if given, receives the document so far (complete=False) after every row and search.
    """
    specs = parse_backends(backend_names)
    manifest = Manifest.load(engines)
    # 1. Open every backend first: unavailable ones fail before anything is timed.
    backends = [open_backend(sp, engines, manifest, device, checkpoint, init_seed) for sp in specs]
    dev = backends[0].device
    frames = choose_frames(backends, manifest)
    duration_s = frames * manifest.hop_length / manifest.sample_rate
    search = dev.type == "cuda" if max_batch is None else max_batch
    timer = Timer(dev)
    # 2. The profiler's first use (before any graph capture), the roofline rates, then each
    #    backend in turn, releasing its memory before the next.
    prepare_profiler(dev)
    log.info("measuring the matmul rate and copy bandwidth of %s", dev)
    roof = measure_device(dev, timer)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    s = Settings(
        manifest.config,
        frames,
        duration_s,
        list(manifest.sampler.step_budgets),
        timer,
        roof,
        runs,
        warmup,
    )
    s_max = dataclasses.replace(s, runs=max_batch_runs or runs, warmup=max_batch_warmup)
    results: list[dict[str, Any]] = []
    searches: dict[str, Any] = {}

    def document(complete: bool) -> dict[str, Any]:
        return {
            "model": manifest.model_name,
            "complete": complete,
            "device": str(dev),
            "duration_s": duration_s,
            "frames": frames,
            "step_budgets": s.step_budgets,
            "config_hash": manifest.config_hash,
            "runs": runs,
            "warmup": warmup,
            "max_batch_runs": s_max.runs if search else None,
            "max_batch_warmup": s_max.warmup if search else None,
            "backends": [b.name for b in backends],
            "roofline": roof,
            "max_batch": searches if search else None,
            "results": results,
        }

    def progress() -> None:
        if on_progress is not None:
            on_progress(document(complete=False))

    for backend in backends:
        log.info("%s: %s", backend.name, json.dumps(backend.describe()))
        try:
            with backend.running():
                results.append({**time_batch(backend, 1, s), "batch_role": "batch-1"})
                progress()
                if search:
                    backend.reset()
                    found = find_max_batch(backend, frames, max_batch_limit)
                    searches[backend.name] = found.to_json()
                    progress()
                    if found.batch == 0:
                        raise InputError(
                            f"{backend.name}: not even batch 1 fits in the memory of {dev} at "
                            f"{duration_s:.2f} s; free the GPU or benchmark a shorter bucket"
                        )
                    log.info("%s: largest batch %d", backend.name, found.batch)
                    row = time_largest(backend, found, s_max)
                    if row is not None:
                        results.append({**row, "batch_role": "max"})
                    searches[backend.name] = found.to_json()
                    progress()
        finally:
            backend.close()
    add_speedups(results)
    return document(complete=True)


def add_speedups(results: list[dict[str, Any]]) -> None:
    """Per row: the first backend's median over this row's, per stage, at the same batch."""
    first = results[0]["backend"]
    base = {r["batch"]: r for r in results if r["backend"] == first}
    for row in results:
        ref = base.get(row["batch"])
        row["speedup"] = (
            None
            if ref is None
            else {
                "baseline_backend": first,
                "stages": {
                    name: ref["stages"][name]["median_ms"] / r["median_ms"]
                    for name, r in row["stages"].items()
                },
            }
        )


# --- CLI ------------------------------------------------------------------------------------------


def _user_errors() -> tuple[type[Exception], ...]:
    """PrestoError of the runtime, and of presto_ref where it is importable (eager backends)."""
    try:
        from presto_common.errors import PrestoError as RefError
    except ImportError:
        return (PrestoError,)
    return (PrestoError, RefError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--engines",
        type=Path,
        metavar="DIR",
        help="build folder (with --preset: built there first; default artifacts/PRESET-DEVICE)",
    )
    p.add_argument(
        "--preset",
        metavar="NAME",
        help="first build (or reuse) what --backends needs for this preset with export.build",
    )
    p.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        help="with --preset: the build's precision (default: bf16 on CUDA, fp32 on the CPU)",
    )
    p.add_argument(
        "--batch-sizes",
        default="1",
        metavar="LIST",
        help="with --preset: batch buckets to build (default: 1); the largest bounds --max-batch "
        "for engines",
    )
    p.add_argument(
        "--durations-s",
        metavar="LIST",
        help="with --preset: duration buckets in seconds (default: the preset's maximum)",
    )
    p.add_argument(
        "--backends",
        default="engines",
        metavar="LIST",
        help="comma-separated, timed in this order; ratios are against the first (default: "
        "engines): engines, torch, torch-nograph, onnxruntime, tensorrt, eager-fp32, eager-bf16",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available"
    )
    p.add_argument("--runs", type=int, default=20, metavar="N", help="timed runs (default: 20)")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed runs (default: 3)")
    p.add_argument(
        "--max-batch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also find and time the largest batch that fits (default: on CUDA only)",
    )
    p.add_argument(
        "--max-batch-limit",
        type=int,
        default=256,
        metavar="N",
        help="largest batch tried (default: 256)",
    )
    p.add_argument(
        "--max-batch-runs",
        type=int,
        metavar="N",
        help="timed runs at the largest batch (default: --runs), to bound long large-batch stages",
    )
    p.add_argument(
        "--max-batch-warmup",
        type=int,
        default=1,
        metavar="N",
        help="untimed runs at the largest batch (default: 1; the search already ran one there)",
    )
    p.add_argument(
        "--checkpoint", type=Path, metavar="DIR", help="eager weights (default: random weights)"
    )
    p.add_argument(
        "--init-seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the eager random weights without --checkpoint (default: 0)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the result here")
    p.add_argument("--compare", type=Path, metavar="BASELINE.json", help="exit 1 on regression")
    p.add_argument(
        "--threshold-sigmas",
        type=float,
        default=3.0,
        metavar="K",
        help="allowed slowdown in combined coefficients of variation (default: 3)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return p


def parse_list(p: argparse.ArgumentParser, flag: str, text: str | None, kind: type) -> list | None:
    """'1,4' -> [1, 4] (None stays None); a usage error naming the flag otherwise."""
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        p.error(f"{flag} {text}: expected a comma-separated list of positive {kind.__name__}s")
    return values


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Replace `path` with `doc` atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    from presto_common.cli import setup_logging

    argv = sys.argv[1:] if argv is None else argv
    p = build_parser()
    args = p.parse_args(argv)
    if args.runs < 2 or args.warmup < 0:
        p.error("--runs must be >= 2 (for a spread) and --warmup >= 0")
    if args.max_batch_limit < 1:
        p.error(f"--max-batch-limit {args.max_batch_limit} must be >= 1")
    if args.max_batch_runs is not None and args.max_batch_runs < 2:
        p.error(f"--max-batch-runs {args.max_batch_runs} must be >= 2 (for a spread)")
    if args.max_batch_warmup < 0:
        p.error(f"--max-batch-warmup {args.max_batch_warmup} must be >= 0")
    if args.preset is None:
        if args.engines is None:
            p.error("give --engines DIR (a build folder), or --preset NAME to build one first")
        given = [f for f in ("precision", "durations_s") if getattr(args, f) is not None]
        if args.batch_sizes != "1":
            given.append("batch_sizes")
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            p.error(f"{flags} only apply with --preset (they choose what is built)")
    batch_sizes = parse_list(p, "--batch-sizes", args.batch_sizes, int)
    durations_s = parse_list(p, "--durations-s", args.durations_s, float)
    try:
        specs = parse_backends(args.backends)
    except ValueError as err:
        p.error(f"--backends {args.backends}: {err}")
    if args.checkpoint and not any(sp.kind == "eager" for sp in specs):
        p.error("--checkpoint only applies to eager-fp32 / eager-bf16; add one to --backends")
    setup_logging(args)
    log.info("command: %s", json.dumps({"argv": argv, **vars(args)}, default=str))
    start = time.perf_counter()
    env: dict[str, Any] = {}

    def with_environment(doc: dict[str, Any]) -> dict[str, Any]:
        if not env:  # once: the git commit and manifest hash do not change during the run
            env.update(environment(torch.device(doc["device"]), args.engines))
        return {**doc, "environment": env}

    def save_progress(doc: dict[str, Any]) -> None:
        write_json(args.json, with_environment(doc))

    try:
        baseline = load_baseline(args.compare) if args.compare else None
        if args.preset is not None:
            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            precision = args.precision or ("bf16" if device == "cuda" else "fp32")
            if args.engines is None:
                args.engines = Path("artifacts") / f"{args.preset}-{device}-{precision}"
            build_for(args.preset, args.engines, specs, device, precision, batch_sizes, durations_s)
        result = run_benchmark(
            args.engines,
            args.backends,
            args.device,
            args.runs,
            args.warmup,
            args.max_batch,
            args.max_batch_limit,
            args.max_batch_runs,
            args.checkpoint,
            args.init_seed,
            args.max_batch_warmup,
            save_progress if args.json else None,
        )
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        log.info("FAILED after %.1f s", time.perf_counter() - start)
        return 1
    result = with_environment(result)
    print(format_report(result, STAGES))
    outputs = []
    if args.json:
        write_json(args.json, result)
        outputs.append(str(args.json))
    status = 0
    if baseline is not None:
        verdict = compare(result, baseline, args.threshold_sigmas)
        for line in verdict.regressions:
            print(f"REGRESSION {line}", file=sys.stderr)
        print(f"--compare {args.compare}: {verdict.summary()}", file=sys.stderr)
        status = 0 if verdict.ok else 1
    print(json.dumps(result))
    log.info(
        "%s in %.1f s%s",
        "FAILED (--compare)" if status else "OK",
        time.perf_counter() - start,
        f": {', '.join(outputs)}" if outputs else "",
    )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
