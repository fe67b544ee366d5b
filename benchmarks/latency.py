"""Latency per stage and end to end for one build folder, with FLOPs and a roofline floor beside each.

At the build's longest batch-1 bucket: text encoding (uncached: a new prompt every run), all DiT
steps of the default schedule (each at its budget, re-noising included), the VAE decoder, the
mono-to-stereo model, and `Pipeline.generate` end to end, mono and stereo (a new prompt every run, so
text encoding is included). Each row gives median, p90 and min (ms), the coefficient of variation
(stdev / mean), the real-time factor RTF = audio seconds / median seconds, the stage's FLOPs
(benchmarks.flops) and the achieved GFLOP/s. Timing uses CUDA events on a GPU, perf_counter on the
CPU, after --warmup discarded runs.

Roofline, measured on the same device in the same run: the dense matmul rate (bf16 on CUDA, fp32 on
the CPU) and the copy bandwidth (bytes read + written). floor_ms = max(FLOPs / matmul rate,
artifact bytes / bandwidth), where artifact bytes are the sizes of the engine files the stage runs
(weights read once per call; activation traffic is not counted, so this is a lower bound);
pct_of_floor = 100 x floor_ms / median_ms.

Regression rule for --compare: a stage regresses when
    median_new > median_base x (1 + max(5%, K x sqrt(cv_new^2 + cv_base^2)))
with K = --threshold-sigmas, i.e. the slowdown must exceed both 5% and K combined run-to-run
spreads. Exit 1 names each regressed stage; stages missing from either run are skipped.

The last stdout line is one JSON document; --json PATH writes it with the environment added.

TODO (GPU round): search the largest batch that fits per duration bucket; only batch 1 is timed.

examples:
  python -m benchmarks.latency --engines /tmp/x --device cpu --runs 5
  python -m benchmarks.latency --engines artifacts/presto-ls --device cuda --json results.json
  python -m benchmarks.latency --engines artifacts/presto-ls --compare benchmarks/baselines/h100.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks import flops as flops_mod

PROMPT = "warm lofi hip hop with piano and vinyl crackle"
BPM = 120.0
MIN_REGRESSION = 0.05  # a slowdown below 5% never counts as a regression
STAGES = ("text_encoder", "dit_steps", "vae_decoder", "stereo", "e2e_mono", "e2e_stereo")


# --- timing ---------------------------------------------------------------------------------------


class Timer:
    """Wall time of a callable in ms: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def summarize(times_ms: list[float]) -> dict[str, float]:
    """median, p90 (nearest rank), min and coefficient of variation of a list of times."""
    ordered = sorted(times_ms)
    mean = statistics.fmean(ordered)
    cv = statistics.stdev(ordered) / mean if len(ordered) > 1 and mean > 0 else 0.0
    return {
        "median_ms": statistics.median(ordered),
        "p90_ms": ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)],
        "min_ms": ordered[0],
        "cv": cv,
        "runs": len(ordered),
    }


def time_fn(timer: Timer, fn: Callable[[int], Any], runs: int, warmup: int) -> dict[str, float]:
    """Call fn(i) warmup times untimed, then `runs` times timed; i counts every call."""
    for i in range(warmup):
        fn(i)
    return summarize([timer(lambda i=i: fn(warmup + i)) for i in range(runs)])


def measure_device(device: torch.device, timer: Timer) -> dict[str, float]:
    """Dense matmul rate (GFLOP/s) and copy bandwidth (GB/s, read + write) of this device."""
    if device.type == "cuda":
        n, dtype, copy_bytes, reps = 8192, torch.bfloat16, 1 << 30, 10
    else:
        n, dtype, copy_bytes, reps = 1024, torch.float32, 1 << 26, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up (library init, autotuning)
    mm_ms = min(timer(lambda: torch.mm(a, b)) for _ in range(reps))
    src = torch.empty(copy_bytes // 4, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_ms = min(timer(lambda: dst.copy_(src)) for _ in range(reps))
    return {
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "matmul_n": n,
        "matmul_gflops": 2 * n**3 / (mm_ms * 1e-3) / 1e9,
        "copy_gbps": 2 * copy_bytes / (copy_ms * 1e-3) / 1e9,
    }


# --- the benchmark --------------------------------------------------------------------------------


def run_benchmark(
    engines: Path, backend: str, device: str | None, runs: int, warmup: int
) -> dict[str, Any]:
    """Time every stage and the whole chain at the build's longest batch-1 bucket."""
    from runtime.pipeline import Pipeline
    from runtime.schedule import draw_noise

    pipe = Pipeline(engines, backend=backend, device=device)
    m, dev = pipe.manifest, pipe.device
    timer = Timer(dev)
    frames = max(pipe.built_frames(1))
    duration_s = frames * m.hop_length / m.sample_rate
    sigmas, budgets = list(m.sampler.sigmas), list(m.sampler.step_budgets)
    dits, decoder, m2s = pipe.chain_engines(1, frames, budgets, stereo=True)
    sizes = {
        "text_encoder": pipe.artifact("text_encoder", 1, None).size_bytes,
        "dit_steps": sum(pipe.artifact("dit", 1, frames, b).size_bytes for b in budgets),
        "vae_decoder": pipe.artifact("vae_decoder", 1, frames).size_bytes,
        "stereo": pipe.artifact("stereo", 1, frames).size_bytes,
    }
    sizes["e2e_mono"] = sizes["text_encoder"] + sizes["dit_steps"] + sizes["vae_decoder"]
    sizes["e2e_stereo"] = sizes["e2e_mono"] + sizes["stereo"]
    stage_flops = flops_mod.pipeline_flops(m.config, 1, frames, budgets)

    text, mask = pipe.encode_text([PROMPT])
    noise = [z.to(dev) for z in draw_noise([0], (m.latent_channels, frames), len(sigmas))]
    bpm = torch.full((1,), BPM, device=dev)
    width = torch.ones(1, device=dev)
    (x0,) = dits[budgets[-1]](noise[0], torch.ones(1, device=dev), text, mask, bpm)
    (mono,) = decoder(x0)

    def prompt(i: int) -> str:  # a new prompt each call defeats the pipeline's text cache
        return f"{PROMPT} #{i}"

    calls: dict[str, Callable[[int], Any]] = {
        "text_encoder": lambda i: pipe.encode_text([prompt(i)]),
        "dit_steps": lambda i: _dit_loop(dits, sigmas, budgets, text, mask, bpm, noise),
        "vae_decoder": lambda i: decoder(x0),
        "stereo": lambda i: m2s(mono, width),
        "e2e_mono": lambda i: pipe.generate(
            [prompt(10_000 + i)], seeds=[i], bpm=BPM, duration_s=duration_s, stereo=False
        ),
        "e2e_stereo": lambda i: pipe.generate(
            [prompt(20_000 + i)], seeds=[i], bpm=BPM, duration_s=duration_s, stereo=True
        ),
    }
    roof = measure_device(dev, timer)
    rows = {}
    for name in STAGES:
        row = time_fn(timer, calls[name], runs, warmup)
        f = stage_flops[name]
        compute_ms = f / (roof["matmul_gflops"] * 1e9) * 1e3
        memory_ms = sizes[name] / (roof["copy_gbps"] * 1e9) * 1e3
        floor_ms = max(compute_ms, memory_ms)
        row.update(
            rtf=duration_s / (row["median_ms"] * 1e-3),
            flops=f,
            gflops_per_s=f / (row["median_ms"] * 1e-3) / 1e9,
            artifact_bytes=sizes[name],
            floor_ms=floor_ms,
            pct_of_floor=100 * floor_ms / row["median_ms"],
        )
        rows[name] = row
    return {
        "model": m.model_name,
        "backend": pipe.backend,
        "device": str(dev),
        "batch": 1,
        "frames": frames,
        "duration_s": duration_s,
        "step_budgets": budgets,
        "roofline": roof,
        "stages": rows,
        "config_hash": m.config_hash,
    }


def _dit_loop(dits: dict, sigmas: list[float], budgets: list[int], text, mask, bpm, noise) -> None:
    """The ping-pong loop of runtime.pipeline.run_chain without the decoder."""
    x = sigmas[0] * noise[0]
    for i, (sigma, budget) in enumerate(zip(sigmas, budgets)):
        sigma_t = torch.full((1,), sigma, dtype=torch.float32, device=x.device)
        (x0,) = dits[budget](x, sigma_t, text, mask, bpm)
        if i + 1 < len(sigmas):
            x = x0 + sigmas[i + 1] * noise[i + 1]


# --- environment, table and comparison ------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    """Device name and library versions, and the git commit where git can tell it."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        env["git_commit"] = out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def format_table(result: dict[str, Any]) -> str:
    roof = result["roofline"]
    lines = [
        f"{result['model']} on {result['device']} ({result['backend']}), batch 1, "
        f"{result['duration_s']:.3f} s = {result['frames']} frames, budgets {result['step_budgets']}",
        f"measured: matmul {roof['matmul_gflops']:.1f} GFLOP/s ({roof['matmul_dtype']}), "
        f"copy {roof['copy_gbps']:.1f} GB/s",
        f"{'stage':<14}{'median':>10}{'p90':>10}{'min':>10}{'cv':>7}{'RTF':>9}"
        f"{'GFLOP':>10}{'GFLOP/s':>10}{'floor':>10}{'%floor':>8}",
    ]
    for name, r in result["stages"].items():
        lines.append(
            f"{name:<14}{r['median_ms']:>10.2f}{r['p90_ms']:>10.2f}{r['min_ms']:>10.2f}"
            f"{r['cv']:>7.2f}{r['rtf']:>9.1f}{r['flops'] / 1e9:>10.3f}{r['gflops_per_s']:>10.1f}"
            f"{r['floor_ms']:>10.3f}{r['pct_of_floor']:>8.1f}"
        )
    lines.append("times in ms; RTF = audio seconds / median seconds; floor in ms")
    return "\n".join(lines)


def compare(current: dict[str, Any], baseline: dict[str, Any], k: float) -> list[str]:
    """Stages whose median regressed (see the module docstring for the rule), with the numbers."""
    regressed = []
    for name, row in current["stages"].items():
        base = baseline.get("stages", {}).get(name)
        if base is None:
            continue
        allowed = max(MIN_REGRESSION, k * math.hypot(row["cv"], base["cv"]))
        if row["median_ms"] > base["median_ms"] * (1 + allowed):
            change = row["median_ms"] / base["median_ms"] - 1
            regressed.append(
                f"{name}: median {row['median_ms']:.2f} ms vs baseline {base['median_ms']:.2f} ms "
                f"({change:+.1%}, allowed +{allowed:.1%})"
            )
    return regressed


# --- CLI ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--engines", type=Path, required=True, metavar="DIR", help="build folder")
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "onnxruntime", "torch", "tensorrt"),
        help="engine backend (default: auto)",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available"
    )
    p.add_argument("--runs", type=int, default=20, metavar="N", help="timed runs (default: 20)")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed runs (default: 3)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the result here")
    p.add_argument("--compare", type=Path, metavar="BASELINE.json", help="exit 1 on regression")
    p.add_argument(
        "--threshold-sigmas",
        type=float,
        default=3.0,
        metavar="K",
        help="allowed slowdown in combined coefficients of variation (default: 3)",
    )
    args = p.parse_args(argv)
    if args.runs < 2 or args.warmup < 0:
        p.error("--runs must be >= 2 (for a spread) and --warmup >= 0")

    from runtime.errors import PrestoError

    try:
        result = run_benchmark(args.engines, args.backend, args.device, args.runs, args.warmup)
    except PrestoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    result["environment"] = environment(torch.device(result["device"]))
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    status = 0
    if args.compare:
        regressed = compare(result, json.loads(args.compare.read_text()), args.threshold_sigmas)
        for line in regressed:
            print(f"REGRESSION {line}", file=sys.stderr)
        status = 1 if regressed else 0
    print(json.dumps(result))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
