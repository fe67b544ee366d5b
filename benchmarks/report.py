"""The human-readable table of a benchmarks.latency result (the JSON document is the record), and
the atomic JSON writer of the benchmarks' --json files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    f"{'stage':<14}{'median':>10}{'p90':>10}{'min':>10}{'cv':>7}{'RTF':>9}"
    f"{'GFLOP':>10}{'GFLOP/s':>10}{'floor':>10}{'%floor':>8}{'peak MiB':>10}"
)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _describe(row: dict[str, Any]) -> str:
    if row["kind"] == "eager":
        return f"eager {row['precision']}, {row['weights']}"
    graph = "CUDA graph" if row["cuda_graph"] else "no CUDA graph"
    return f"{row['runtime_backend']} {row['precision']}, {graph}"


def format_block(row: dict[str, Any]) -> list[str]:
    """One (backend, batch) block: header, a line per stage, memory, launches and speed-ups."""
    lines = [
        f"{row['backend']} ({_describe(row)}), batch {row['batch']}: "
        f"{row['throughput_audio_s_per_s']:.2f} audio s per s",
        COLUMNS,
    ]
    for name, r in row["stages"].items():
        lines.append(
            f"{name:<14}{r['median_ms']:>10.2f}{r['p90_ms']:>10.2f}{r['min_ms']:>10.2f}"
            f"{r['cv']:>7.2f}{r['rtf']:>9.1f}{r['flops'] / 1e9:>10.3f}{r['gflops_per_s']:>10.1f}"
            f"{r['floor_ms']:>10.3f}{r['pct_of_floor']:>8.1f}{_mib(r['peak_mib']):>10}"
        )
    mem = row["peak_memory_mib"]
    if mem is not None:
        lines.append(
            f"pipeline peak {_mib(mem['pipeline_peak_mib'])} MiB "
            f"({_mib(mem['pipeline_peak_above_start_mib'])} above its start), "
            f"GPU in use {_mib(mem['device_used_mib'])} MiB"
        )
    launches = row["kernel_launches"]
    if launches is not None:
        lines.append(
            f"one stereo generation: {launches['kernel_launch_calls']} kernel launch calls, "
            f"{launches['graph_launches']} CUDA graph launches, "
            f"{launches['gpu_kernels']} kernels on the GPU"
        )
    speedup = row["speedup"]
    if speedup is not None and speedup["baseline_backend"] != row["backend"]:
        lines.append(
            f"x faster than {speedup['baseline_backend']}: "
            + ", ".join(f"{name} {x:.2f}" for name, x in speedup["stages"].items())
        )
    return lines


def format_side_by_side(result: dict[str, Any], stages: Sequence[str]) -> list[str]:
    """Medians of every backend at each batch that more than one backend ran, with ratios."""
    lines = []
    first = result["backends"][0]
    for batch in sorted({r["batch"] for r in result["results"]}):
        rows = [r for r in result["results"] if r["batch"] == batch]
        if len(rows) < 2:
            continue
        lines += ["", f"median ms at batch {batch} (x faster than {first})"]
        lines.append(f"{'stage':<14}" + "".join(f"{r['backend']:>24}" for r in rows))
        for name in stages:
            cells = []
            for r in rows:
                cell = f"{r['stages'][name]['median_ms']:.2f}"
                if r["speedup"] is not None and r["backend"] != first:
                    cell += f" ({r['speedup']['stages'][name]:.2f}x)"
                cells.append(f"{cell:>24}")
            lines.append(f"{name:<14}" + "".join(cells))
    return lines


def format_max_batch(searches: dict[str, Any] | None) -> list[str]:
    if not searches:
        return []
    lines = ["", "largest batch that fits:"]
    for name, s in searches.items():
        tried = ", ".join(f"{t['batch']} {'ok' if t['fits'] else 'OOM'}" for t in s["trials"])
        where = (
            f"limited to the built batches {s['built_batches']}"
            if s.get("limited_to_built_buckets")
            else f"searched up to {s['limit']}" + (" (the limit)" if s["hit_limit"] else "")
        )
        if s.get("timing_out_of_memory"):
            where += f"; timing every stage ran out of memory at {s['timing_out_of_memory']}"
        lines.append(f"  {name}: {s['batch']}, {where}; trials: {tried}")
    return lines


def format_report(result: dict[str, Any], stages: Sequence[str]) -> str:
    roof = result["roofline"]
    lines = [
        f"{result['model']} on {result['device']}: {result['duration_s']:.3f} s = "
        f"{result['frames']} frames, step budgets {result['step_budgets']}, "
        f"{result['runs']} runs after {result['warmup']} warm-up",
        f"measured: matmul {roof['matmul_gflops']:.1f} GFLOP/s ({roof['matmul_dtype']}), "
        f"copy {roof['copy_gbps']:.1f} GB/s",
    ]
    for row in result["results"]:
        lines += ["", *format_block(row)]
    lines += format_side_by_side(result, stages)
    lines += format_max_batch(result["max_batch"])
    lines += [
        "",
        "times in ms; RTF = audio seconds / median seconds; floor in ms; peak MiB on CUDA only",
    ]
    return "\n".join(lines)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Replace `path` with `doc` atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
