"""Latency per stage and end to end for several backends side by side, at batch 1 and the largest batch.

For each backend of --backends, at the build's longest batch-1 duration bucket (shared by all of
them) and its default schedule: text encoding (new prompts, so uncached), the sampling loop, the
VAE decoder, the mono-to-stereo model, and whole generations, mono and stereo (benchmarks.backends):

    engines (default)  the build's auto backend, CUDA graph on CUDA
    torch, torch-nograph, onnxruntime, tensorrt    one engine backend of the build
    eager-fp32, eager-bf16    presto_ref's eager model from the manifest's config

Each row: median, p90, min and max (ms) after --warmup discarded runs (the JSON keeps each run's
time, in order), cv (stdev / mean), RTF = audio seconds / median seconds, the stage's FLOPs and
weight bytes from the build's manifest, GFLOP/s, and the roofline floor from this device's
measured matmul rate and bandwidth (benchmarks.costs); on CUDA, peak allocator memory and the
kernel launches of one stereo generation. "x faster than <first>" is the first backend's median
over this one's at the same batch.

--also-engines DIR (repeatable) times the engine backends of --backends on another build of the
same model too, named BACKEND@LABEL (LABEL: that build's DiT quantization, e.g. torch@fp8, else
its precision), so a quantized build is measured side by side with the bf16 one in one run.

--max-batch (default on CUDA only) finds the largest batch whose stereo generation fits: eager
models by doubling then bisecting up to --max-batch-limit, engines among the built buckets
(benchmarks.max_batch); every stage is timed there again (stepping down while that runs out of
memory), with throughput = batch x duration / e2e stereo median, in audio s per s.

--compare BASELINE.json matches rows by (backend, batch, stage) within runs of the same model,
duration and device; it prints one REGRESSION line per regressed stage and one line saying what it
compared, and exits 1 on a regression, or when no row or not every stage found a baseline row
(benchmarks.compare).

The last stdout line is one JSON document; --json PATH writes it too, rewritten atomically after
every row with "complete": false until the run ends (a run cut short keeps what it measured, and
is refused as a baseline):
    {model, complete, device, duration_s, frames, step_budgets, config_hash, runs, warmup,
     max_batch_runs, max_batch_warmup, backends, roofline, max_batch: {backend: search} | null,
     environment: {gpu, gpu_driver, cuda, torch, tensorrt, onnxruntime, git_commit, ...},
     results: [{backend, kind, precision, cuda_graph, batch, batch_role, stages: {stage: row},
                peak_memory_mib, kernel_launches, throughput_audio_s_per_s, speedup}]}

With --preset NAME, export first builds (or reuses) what --backends needs into --engines (default
artifacts/NAME-DEVICE-PRECISION), with --precision, --batch-sizes, --durations-s (benchmarks.prepare).

examples:
  python -m benchmarks.latency --preset tiny --device cpu --runs 5
  python -m benchmarks.latency --engines artifacts/presto-ls --device cuda --json results.json \\
      --backends eager-fp32,eager-bf16,torch-nograph,torch --max-batch-runs 5
  python -m benchmarks.latency --engines artifacts/presto-ls --device cuda --no-max-batch \\
      --backends torch,torch-nograph,eager-bf16 --compare benchmarks/baselines/h100-presto-ls-bf16.json
  # a quantized build beside its bf16 build: rows torch and torch@fp8, batch 1 and the largest
  python -m benchmarks.latency --engines artifacts/ls-bf16 --also-engines artifacts/ls-fp8 \\
      --device cuda --backends torch
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.backends import parse_backends
from benchmarks.compare import compare, load_baseline
from benchmarks.costs import STAGES
from benchmarks.environment import environment
from benchmarks.harness import run_benchmark
from benchmarks.prepare import build_for
from benchmarks.report import format_report, write_json
from presto_common.cli import add_logging_flags, check_device, check_json_output, setup_logging
from presto_common.errors import PrestoError

log = logging.getLogger("benchmarks.latency")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--engines", type=Path, metavar="DIR", help="build folder (made first with --preset)")
    add(
        "--also-engines",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="another build of the same model (e.g. --quantization fp8): its engine backends are "
        "timed too, as BACKEND@fp8 (repeatable)",
    )
    add("--preset", metavar="NAME", help="first build (or reuse) what --backends needs")
    add("--precision", choices=("bf16", "fp32"), help="with --preset (default: bf16 on CUDA, fp32)")
    add("--batch-sizes", metavar="LIST", help="with --preset: batch buckets (default: 1)")
    add("--durations-s", metavar="LIST", help="with --preset: seconds (default: the longest)")
    add(
        "--backends",
        default="engines",
        metavar="LIST",
        help="comma-separated, timed in this order; ratios are against the first (default: "
        "engines): engines, torch, torch-nograph, onnxruntime, tensorrt, eager-fp32, eager-bf16",
    )
    add("--device", choices=("cpu", "cuda"), help="default: cuda if available")  # checked in main
    add("--runs", type=int, default=20, metavar="N", help="timed runs (default: 20)")
    add("--warmup", type=int, default=3, metavar="N", help="untimed runs (default: 3)")
    add("--max-batch", action=argparse.BooleanOptionalAction, help="default: on CUDA only")
    add(
        "--max-batch-limit", type=int, default=256, metavar="N", help="largest batch (default: 256)"
    )
    add("--max-batch-runs", type=int, metavar="N", help="timed runs there (default: --runs)")
    add("--max-batch-warmup", type=int, default=1, metavar="N", help="warm-ups there (default: 1)")
    add("--checkpoint", type=Path, metavar="DIR", help="eager weights (default: random weights)")
    add("--init-seed", type=int, default=0, metavar="N", help="eager weights' seed (default: 0)")
    add("--json", type=Path, metavar="PATH", help="also write the result here")
    add("--compare", type=Path, metavar="BASELINE.json", help="gate this run against that one")
    add("--threshold-sigmas", type=float, default=3.0, metavar="K", help="allowed cvs (default: 3)")
    add_logging_flags(p)
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = build_parser()
    args = p.parse_args(argv)
    least = dict(runs=2, max_batch_runs=2, max_batch_limit=1, warmup=0, max_batch_warmup=0)
    for name, low in least.items():  # two timed runs at least, for a spread
        if getattr(args, name) is not None and getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= {low}")
    batch_sizes = parse_list(p, "--batch-sizes", args.batch_sizes, int)
    durations_s = parse_list(p, "--durations-s", args.durations_s, float)
    if args.preset is None:
        if args.engines is None:
            p.error("give --engines DIR (a build folder), or --preset NAME to build one first")
        given = [f for f in ("precision", "batch_sizes", "durations_s") if getattr(args, f)]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            p.error(f"{flags} only apply with --preset (they choose what is built)")
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
        # Refuse a --json path or device that cannot work before building or timing anything.
        if args.json is not None:
            check_json_output(args.json)
        if args.device is not None:
            check_device(args.device)
        baseline = load_baseline(args.compare) if args.compare else None
        if args.preset is not None:
            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            precision = args.precision or ("bf16" if device == "cuda" else "fp32")
            if args.engines is None:
                args.engines = Path("artifacts") / f"{args.preset}-{device}-{precision}"
            build_for(
                args.preset, args.engines, specs, device, precision, batch_sizes or [1], durations_s
            )
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
            args.also_engines,
        )
    except PrestoError as err:
        print(f"error: {err}", file=sys.stderr)
        log.info("FAILED after %.1f s", time.perf_counter() - start)
        return 1
    result = with_environment(result)
    print(format_report(result, STAGES))
    if args.json:
        write_json(args.json, result)
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
        f": {args.json}" if args.json else "",
    )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
