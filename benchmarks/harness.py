"""One benchmarks.latency run: every backend at batch 1, then (when searched) at its largest batch.

Per (backend, batch) row, every stage is timed (benchmarks.measure) and given its cost and roofline
floor (benchmarks.costs), its RTF and, on CUDA, its peak allocator memory; then the kernel launches
of one stereo generation are counted. The result is the JSON document benchmarks.latency writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.backends import (
    Backend,
    build_label,
    duration_s,
    open_backend,
    parse_backends,
)
from benchmarks.costs import STAGES, floor_ms
from benchmarks.max_batch import (
    BatchSearch,
    double_then_bisect,
    fits_in_memory,
    largest_fitting,
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
from presto_common.errors import ArtifactError, InputError, ShapeError
from runtime import Manifest, allocator_settings, oom_count

log = logging.getLogger("benchmarks.latency")


@dataclass
class Settings:
    """What every (backend, batch) row shares."""

    frames: int  # T_lat of the benchmark's duration bucket
    duration_s: float  # seconds of audio per take
    timer: Timer
    roofline: dict[str, Any]  # measure_device's rates
    runs: int
    warmup: int


# --- one backend at one batch ---------------------------------------------------------------------


def time_batch(backend: Backend, batch: int, s: Settings) -> dict[str, Any]:
    """Every stage of `backend` at `batch`: timing, cost, floor, memory; then launches, throughput."""
    dev = backend.device
    stages = backend.stages(batch, s.frames)
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
        cost, seconds = stages.costs[name], row["median_ms"] * 1e-3
        floor = floor_ms(cost, s.roofline)
        row.update(
            rtf=s.duration_s / seconds,
            flops=cost.flops,
            gflops_per_s=cost.flops / seconds / 1e9,
            weight_bytes=cost.weight_bytes,
            floor_ms=floor,
            pct_of_floor=100 * floor / row["median_ms"],
            **mem,
        )
        rows[name] = row
    del stages  # its inputs are not needed for the launch count
    launches = kernel_launches(lambda: backend.generate(batch, s.frames, stereo=True), dev)
    e2e = rows["e2e_stereo"]
    memory = None
    if dev.type == "cuda":
        memory = {
            "pipeline_peak_mib": e2e["peak_mib"],
            "pipeline_peak_above_start_mib": e2e["peak_above_start_mib"],
            "device_used_mib": device_memory_used_mib(dev),
            # Process-wide and set by the first capturing pipeline (runtime.graphs), so the rows
            # timed after a torch row allocate through expandable segments too.
            "allocator_settings": allocator_settings(),
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


def choose_frames(backends: list[Backend]) -> int:
    """The longest batch-1 bucket (latent frames) that every backend can time."""
    built = {b.name: b.batch1_frames() for b in backends}
    common = set.intersection(*(set(f) for f in built.values()))
    if not common:
        have = "; ".join(f"{name}: {f or 'none'}" for name, f in built.items())
        raise ShapeError(
            f"the backends share no batch-1 duration bucket (latent frames: {have}); rebuild them "
            f"with the same `python -m export.build --durations-s` or benchmark them apart"
        )
    return max(common)


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
    also_engines: Sequence[Path] = (),
) -> dict[str, Any]:
    """Time every backend at batch 1 and (when searched) at its largest batch; the JSON document.

    on_progress, if given, receives the document so far (complete=False) after every row and search.
    also_engines: other builds of the same model (a quantized one beside bf16): each engine backend
    of backend_names is timed on each of them too, after the others, as BACKEND@LABEL (build_label).
    """
    manifest = Manifest.load(engines)
    specs = parse_backends(backend_names)
    # 1. Open every backend first: unavailable ones fail before anything is timed.
    backends = [open_backend(spec, engines, device, checkpoint, init_seed) for spec in specs]
    for folder in also_engines:
        if Path(folder).resolve() == Path(engines).resolve():
            raise InputError(
                f"--also-engines {folder} is the --engines build itself; give another build"
            )
        other = Manifest.load(folder)
        if other.config_hash != manifest.config_hash:
            raise ArtifactError(
                f"--also-engines {folder} is a build of {other.model_name} "
                f"({other.config_hash[:12]}), --engines {engines} of {manifest.model_name} "
                f"({manifest.config_hash[:12]}); compare builds of one model"
            )
        label = build_label(other)
        backends += [
            open_backend(dataclasses.replace(spec, name=f"{spec.name}@{label}"), folder, device)
            for spec in specs
            if spec.kind == "engines"
        ]
    names = [b.name for b in backends]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InputError(
            f"two builds give the same backend name {', '.join(twice)} (their DiTs have the same "
            "quantization or precision); time them in separate runs"
        )
    dev = backends[0].device
    frames = choose_frames(backends)
    search = dev.type == "cuda" if max_batch is None else max_batch
    # 2. The profiler's first use (before any graph capture), the roofline rates, then each
    #    backend in turn, releasing its memory before the next.
    prepare_profiler(dev)
    log.info("measuring the matmul rate and copy bandwidth of %s", dev)
    timer = Timer(dev)
    roof = measure_device(dev, timer)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    s = Settings(frames, duration_s(frames, manifest), timer, roof, runs, warmup)
    s_max = dataclasses.replace(s, runs=max_batch_runs or runs, warmup=max_batch_warmup)
    results: list[dict[str, Any]] = []
    searches: dict[str, Any] = {}

    def document(complete: bool) -> dict[str, Any]:
        return {
            "model": manifest.model_name,
            "complete": complete,
            "device": str(dev),
            "duration_s": s.duration_s,
            "frames": frames,
            "step_budgets": list(manifest.sampler.step_budgets),
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
                            f"{s.duration_s:.2f} s; free the GPU or benchmark a shorter bucket"
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
