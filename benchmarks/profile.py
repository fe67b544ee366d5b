"""Where each stage's GPU time goes: one profiled call per stage, kernels grouped by what they do.

Kernel names are sorted into classes: GEMM (cuBLAS / nvjet / CUTLASS / Triton matmul templates),
attention (cuDNN SDPA, FlashAttention, memory-efficient FMHA), convolution (cuDNN implicit GEMM and
friends), fused (Inductor's Triton pointwise and reduction kernels, whatever ops they are named
after), elementwise (ATen's), reduction, copy / layout, other. For each stage: the wall time of the
call, the sum of kernel times (ms), the number of kernel launches, and time per class, plus the top
kernels. Kernel time well below wall time means the GPU idles between launches (launch- or
host-bound); a class's share says which kernels to fix. Where it idles is attributed to the host:
the call's wall interval minus every kernel's interval, split by the profiled op that the calling
thread was in at the time (`aten::randn` for the noise, `aten::copy_` for a copy to the host, ...;
time in no op, such as NumPy's copy of the audio into its array, is "outside any op"). The stages
are run through the runtime's public per-stage API (`Pipeline.bucket`), at the build's longest
duration for --batch.

examples:
  python -m benchmarks.profile --engines artifacts/presto-ls-bf16 --json profile.json
  python -m benchmarks.profile --engines artifacts/presto-ls-bf16 --top 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from presto_common.errors import PrestoError
from runtime import Pipeline

# (class, substrings of a kernel name); the first class with a matching substring wins. Inductor's
# Triton kernels are named after the ops they fuse (a pointwise kernel after a convolution carries
# "convolution" in its name), so they are told apart by prefix first: "triton_tem" is a matmul or
# convolution template, any other "triton_" kernel is fused pointwise or reduction code.
KERNEL_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("sdpa", "fmha", "flash_fprop", "flash_fwd", "attention_kernel")),
    ("convolution", ("conv", "fprop", "implicit_gemm", "dgrad", "winograd")),
    ("gemm", ("gemm", "nvjet", "cublas", "cutlass", "xmma", "matmul")),
    (
        "copy/layout",
        ("copy", "memcpy", "memset", "catarray", "nchwtonhwc", "nhwctonchw", "transpose"),
    ),
    ("reduction", ("reduce",)),
    ("elementwise", ("elementwise",)),
)


def classify(kernel: str) -> str:
    """The class of a CUDA kernel from its name (see KERNEL_CLASSES); 'other' when none matches."""
    name = kernel.lower()
    if name.startswith("triton_tem"):
        return "gemm" if "_mm" in name or "addmm" in name or "bmm" in name else "convolution"
    if name.startswith("triton_"):
        return "fused"
    for label, keys in KERNEL_CLASSES:
        if any(k in name for k in keys):
            return label
    return "other"


def summarize_kernels(events: Iterable[tuple[str, float]], top: int = 8) -> dict[str, Any]:
    """Aggregate (kernel name, device ms) pairs: totals, launches, ms and count per class, top kernels."""
    per_kernel: dict[str, list[float]] = {}
    for name, ms in events:
        entry = per_kernel.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += ms
    classes: dict[str, dict[str, float]] = {}
    for name, (count, ms) in per_kernel.items():
        c = classes.setdefault(classify(name), {"ms": 0.0, "launches": 0})
        c["ms"] += ms
        c["launches"] += count
    total = sum(c["ms"] for c in classes.values())
    for c in classes.values():
        c["share"] = c["ms"] / total if total else 0.0
    ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "kernel_ms": total,
        "launches": sum(int(c["launches"]) for c in classes.values()),
        "classes": dict(sorted(classes.items(), key=lambda kv: -kv[1]["ms"])),
        "top": [
            {"kernel": k[:120], "class": classify(k), "count": int(n), "ms": ms}
            for k, (n, ms) in ranked
        ],
    }


# The record_function range around the profiled call: its interval is the call's wall time on the
# profiler's clock, and its direct children are the host ops the idle time is split among.
CALL_RANGE = "benchmarks.profile.call"


def device_events(events: Iterable[Any]) -> list[Any]:
    """The profile's GPU-side events: kernels, copies and fills. The CUDA profiler mirrors every
    record_function range onto the GPU timeline as a device event spanning the kernels under it;
    CALL_RANGE's mirror is dropped here (counted as a kernel it inflated kernel_ms by the call's
    GPU span and hid every gap from gpu_idle: the 7683c7a round's profiles)."""
    cuda = torch.autograd.DeviceType.CUDA
    return [ev for ev in events if ev.device_type == cuda and ev.name != CALL_RANGE]


def idle_intervals(busy: Iterable[tuple[float, float]], window: tuple[float, float]):
    """The parts of `window` (start, end) that no `busy` interval covers, in order."""
    gaps, cursor = [], window[0]
    for start, end in sorted(busy):
        if start > cursor:
            gaps.append((cursor, min(start, window[1])))
        cursor = max(cursor, end)
        if cursor >= window[1]:
            break
    if cursor < window[1]:
        gaps.append((cursor, window[1]))
    return [(a, b) for a, b in gaps if b > a]


def attribute_idle(
    gaps: list[tuple[float, float]], ops: Iterable[tuple[str, float, float]], top: int = 8
) -> dict[str, Any]:
    """Split idle `gaps` (µs) among host `ops` (name, start µs, end µs; the call's direct children,
    which never overlap each other): idle_ms, ms per op name (the `top` largest) and the time in
    no op."""
    per_op: dict[str, float] = {}
    covered = 0.0
    for name, start, end in ops:
        us = sum(max(0.0, min(end, b) - max(start, a)) for a, b in gaps)
        if us > 0:
            per_op[name] = per_op.get(name, 0.0) + us
            covered += us
    idle = sum(b - a for a, b in gaps)
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return {
        "idle_ms": idle / 1e3,
        "gaps": len(gaps),
        "by_host_op": [{"op": name[:120], "ms": us / 1e3} for name, us in ranked],
        "outside_any_op_ms": max(0.0, idle - covered) / 1e3,
    }


def gpu_idle(events: list[Any], top: int = 8) -> dict[str, Any] | None:
    """attribute_idle for a profile of one call wrapped in CALL_RANGE: the GPU's idle time within
    the call, by the host op its thread was in; None without the range or without CUDA kernels."""
    cuda = torch.autograd.DeviceType.CUDA
    calls = [ev for ev in events if ev.name == CALL_RANGE and ev.device_type != cuda]
    kernels = [(ev.time_range.start, ev.time_range.end) for ev in device_events(events)]
    if len(calls) != 1 or not kernels:
        return None
    call = calls[0]
    host = [ev for ev in events if ev.device_type != cuda and ev.thread == call.thread]
    children = [
        (ev.name, ev.time_range.start, ev.time_range.end)
        for ev in host
        if ev.cpu_parent is not None and ev.cpu_parent.id == call.id
    ]
    window = (call.time_range.start, call.time_range.end)
    return attribute_idle(idle_intervals(kernels, window), children, top)


def profile_call(fn: Callable[[], Any], warmup: int = 2, top: int = 8) -> dict[str, Any]:
    """Run fn `warmup` times, then once under the CUDA profiler: summarize_kernels, wall_ms and
    gpu_idle (where the GPU waited on the host during the call)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        with record_function(CALL_RANGE):
            fn()
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3
    events = list(prof.events())
    summary = summarize_kernels(
        [(ev.name, ev.device_time / 1e3) for ev in device_events(events)], top
    )
    summary["wall_ms"] = wall_ms  # includes the profiler's own overhead: compare shares, not times
    summary["gpu_idle"] = gpu_idle(events, top)
    return summary


def stage_calls(pipe: Pipeline, batch: int = 1) -> dict[str, Callable[[], Any]]:
    """One call per stage of `pipe`'s bucket at `batch` and its longest duration, through the
    public per-stage API: the text encoder (a new prompt per call), one DiT call per budget of
    the default schedule, the VAE decoder, the mono-to-stereo model, and a stereo generation."""
    bucket, dev = pipe.bucket(batch), pipe.device
    tags = itertools.count()

    def prompts() -> list[str]:
        tag = next(tags)
        return [f"warm lofi hip hop with piano #{tag}.{b}" for b in range(batch)]

    text, mask = bucket.encode_text(prompts())
    noise = bucket.noise(range(batch))
    bpm = torch.full((batch,), 120.0, device=dev)
    width = torch.ones(batch, device=dev)
    latents = bucket.sample(text, mask, bpm, noise).clone()
    mono = bucket.decode(latents).clone()
    # A DiT call takes dit_batch rows: B, or 2B ([cond; uncond]) for a guided sampler.
    rows = bucket.dit_batch // batch
    x, text2, mask2, bpm2 = (t.repeat_interleave(rows, 0) for t in (noise[0], text, mask, bpm))
    calls: dict[str, Callable[[], Any]] = {"text_encoder": lambda: bucket.encode_text(prompts())}
    for b in sorted(set(bucket.budgets)):
        calls[f"dit_b{b}"] = lambda b=b: bucket.denoise(x, 1.0, text2, mask2, bpm2, b)
    calls["vae_decoder"] = lambda: bucket.decode(latents)
    calls["stereo"] = lambda: bucket.to_stereo(mono, width)
    calls["e2e_stereo"] = lambda: pipe.generate(
        prompts(), seeds=list(range(batch)), duration_s=bucket.duration_s
    )
    return calls


def format_profile(name: str, s: dict[str, Any]) -> str:
    classes = ", ".join(
        f"{c} {v['ms']:.2f} ms ({100 * v['share']:.0f}%, {int(v['launches'])})"
        for c, v in s["classes"].items()
    )
    lines = [
        f"{name}: wall {s['wall_ms']:.2f} ms, kernels {s['kernel_ms']:.2f} ms, "
        f"{s['launches']} launches | {classes}"
    ]
    lines += [
        f"    {t['ms']:8.3f} ms {t['count']:4d}x [{t['class']}] {t['kernel']}" for t in s["top"]
    ]
    idle = s.get("gpu_idle")
    if idle:
        parts = [f"{o['op']} {o['ms']:.2f}" for o in idle["by_host_op"]]
        parts.append(f"outside any op {idle['outside_any_op_ms']:.2f}")
        lines.append(
            f"    GPU idle {idle['idle_ms']:.2f} ms in {idle['gaps']} gaps: " + ", ".join(parts)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--engines", type=Path, required=True, metavar="DIR", help="build folder")
    p.add_argument("--backend", default="auto", help="runtime backend (default: auto)")
    p.add_argument("--batch", type=int, default=1, help="batch bucket to profile (default: 1)")
    p.add_argument("--no-cuda-graph", action="store_true", help="profile e2e without the graph")
    p.add_argument("--top", type=int, default=8, help="kernels listed per stage (default: 8)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the result here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "error: benchmarks.profile needs a CUDA device (kernel times come from CUPTI)",
            file=sys.stderr,
        )
        return 1
    try:
        pipe = Pipeline(
            args.engines, backend=args.backend, device="cuda", cuda_graph=not args.no_cuda_graph
        )
        result = {}
        for name, fn in stage_calls(pipe, args.batch).items():
            print(f"profiling {name}", file=sys.stderr, flush=True)
            result[name] = profile_call(fn, top=args.top)
            print(format_profile(name, result[name]), flush=True)
    except PrestoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(
            json.dumps({"backend": pipe.backend, "stages": result}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
