"""Where the time of `Pipeline.generate` goes, run by run, and which phase carries the slow runs.

On the H200 about one generate in five took ~21 ms longer than the median (benchmarks.latency's e2e
rows, and the server's executions at concurrency 1: 47 against 68 ms), while every stage timed alone
had a coefficient of variation near 0.01. This probe put that tail, and the two-GPU slowdown, in the
noise draws (3d9286b; fixed in ff0f0da: runtime/host_copy.py). It times each phase of many generates
of one bucket: the text encoder (cached per prompt), the noise draw and its copy to the device, the
chain (`Bucket.run`: input copies, graph replay, output clones), the copy of the audio to the host,
and the rest (planning, checks, the request's own array). Each phase is bracketed by device
synchronisations, so the phases do not overlap and their sum is a little above an unprobed generate:

    python scripts/phase_probe.py --engines DIR --device cuda --runs 200 --json probe.json

Prints per-phase p50/p90/max, and each phase's mean over the slowest tenth of the runs against the
other nine tenths: the phase whose mean moves is where the tail is. Works on any build (a CPU trial
on the tiny preset runs in seconds).

`--stages` runs the chain uncaptured (no CUDA graph) and times its stages instead of the chain as a
whole: the sampler's DiT calls (`dit`), the VAE decoder (`vae`) and the mono-to-stereo model
(`stereo`); what else the chain does (its finiteness checks) falls into `rest`. `--start-at EPOCH`
waits after the warm-up until that wall-clock instant, so that probes on several GPUs (one process
each) time the same seconds:

    at=$(( $(date +%s) + 60 ))
    for g in 0 1; do CUDA_VISIBLE_DEVICES=$g python scripts/phase_probe.py --engines DIR \
        --batch 8 --runs 40 --start-at $at --json probe-$g.json & done; wait
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.environment import host_environment
from benchmarks.measure import percentile
from runtime import Pipeline
from runtime.bucket import Bucket
from runtime.host_copy import HostStaging

PHASES = {  # phase -> (class, method) whose calls it times
    "text": (Bucket, "encode_text"),
    "noise": (Bucket, "noise"),
    "chain": (Bucket, "run"),
    "to_host": (HostStaging, "to_host"),
}
# --stages: the chain's stages instead of the chain. The DiT calls are one method of the class; the
# decoder and mono-to-stereo engines are attributes of each resolved bucket.
STAGE_PHASES = {
    "text": (Bucket, "encode_text"),
    "noise": (Bucket, "noise"),
    "dit": (Bucket, "_sample"),
    "to_host": (HostStaging, "to_host"),
}
BUCKET_ENGINES = {"vae": "_decoder", "stereo": "_m2s"}


def probe(
    pipe: Pipeline,
    runs: int,
    warmup: int,
    batch: int,
    stereo: bool,
    stages: bool = False,
    start_at: float | None = None,
) -> list[dict]:
    """`runs` timed generates of `batch` takes (after `warmup`, then waiting until `start_at`, a
    time.time() instant, if given): per run, ms per phase, the rest and the total. stages: time the
    chain's stages (the pipeline must run uncaptured) instead of the chain."""
    sync: Callable[[], None] = (
        (lambda: torch.cuda.synchronize(pipe.device))
        if pipe.device.type == "cuda"
        else (lambda: None)
    )
    current: dict[str, float] = defaultdict(float)
    originals = {}

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                current[name] += (time.perf_counter() - start) * 1e3

        return wrapper

    phases = STAGE_PHASES if stages else PHASES
    names = [*phases, *(BUCKET_ENGINES if stages else ())]
    engines = {}
    if stages:  # the bucket generate will use (the longest duration), resolved now so that its
        # engines can be wrapped
        bucket = pipe.bucket(batch, pipe.catalog.seconds(pipe.frames_for(None)), stereo=stereo)
        engines = {attr: getattr(bucket, attr) for attr in BUCKET_ENGINES.values()}
        for name, attr in BUCKET_ENGINES.items():
            if engines[attr] is not None:  # no mono-to-stereo engine in a --mono bucket
                setattr(bucket, attr, timed(name, engines[attr]))
    for name, (cls, method) in phases.items():
        originals[name] = getattr(cls, method)
        setattr(cls, method, timed(name, originals[name]))
    rows = []
    try:
        prompts = ["warm lofi piano with vinyl crackle"] * batch
        for i in range(warmup + runs):
            if i == warmup and start_at is not None:
                if time.time() > start_at:  # the other probes may have started without this one
                    late = time.time() - start_at
                    print(f"warning: warm-up ended {late:.1f} s after --start-at", file=sys.stderr)
                while time.time() < start_at:
                    time.sleep(0.001)
            current.clear()
            sync()
            start = time.perf_counter()
            pipe.generate(prompts, seeds=list(range(i, i + batch)), bpm=90.0, stereo=stereo)
            sync()
            total = (time.perf_counter() - start) * 1e3
            if i >= warmup:
                row = {name: current.get(name, 0.0) for name in names}
                row["rest"] = total - sum(row.values())
                row["total"] = total
                rows.append(row)
    finally:
        for name, (cls, method) in phases.items():
            setattr(cls, method, originals[name])
        for attr, engine in engines.items():
            setattr(bucket, attr, engine)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per phase: p50, p90 (nearest rank, benchmarks.measure.percentile), max; and the mean over
    the slowest tenth of runs (by total) against the mean over the rest."""
    names = [name for name in rows[0] if name not in ("rest", "total")] + ["rest", "total"]
    ranked = sorted(rows, key=lambda r: r["total"])
    cut = max(1, len(ranked) // 10)
    slow, fast = ranked[-cut:], ranked[:-cut] or ranked
    out = {}
    for name in names:
        values = sorted(r[name] for r in rows)
        out[name] = {
            "p50": percentile(values, 0.5),
            "p90": percentile(values, 0.9),
            "max": values[-1],
            "mean_slowest_tenth": sum(r[name] for r in slow) / len(slow),
            "mean_other_runs": sum(r[name] for r in fast) / len(fast),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--engines", type=Path, required=True, help="a build folder")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if present)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mono", action="store_true", help="stop before the mono-to-stereo model")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--stages",
        action="store_true",
        help="no CUDA graph; time the DiT calls, VAE decoder and mono-to-stereo model one by one",
    )
    p.add_argument(
        "--start-at",
        type=float,
        help="wall-clock instant (seconds since the epoch) to start the timed runs at, after warm-up",
    )
    p.add_argument("--json", type=Path, help="write the summary and every run here")
    args = p.parse_args(argv)
    if args.runs < 10:
        p.error(f"--runs {args.runs}: at least 10, so that the slowest tenth is a run")
    pipe = Pipeline(
        args.engines, backend=args.backend, device=args.device, cuda_graph=not args.stages
    )
    rows = probe(
        pipe,
        args.runs,
        args.warmup,
        args.batch,
        stereo=not args.mono,
        stages=args.stages,
        start_at=args.start_at,
    )
    result = summary(rows)
    print(f"{'phase':10} {'p50':>8} {'p90':>8} {'max':>8} {'slowest 10%':>12} {'others':>8}  (ms)")
    for name, s in result.items():
        print(
            f"{name:10} {s['p50']:8.2f} {s['p90']:8.2f} {s['max']:8.2f} "
            f"{s['mean_slowest_tenth']:12.2f} {s['mean_other_runs']:8.2f}"
        )
    if args.json:
        doc = {"args": vars(args) | {"engines": str(args.engines), "json": str(args.json)}}
        doc |= {"device": str(pipe.device), "environment": host_environment()}
        doc |= {"summary": result, "runs": rows}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
