"""Where each stage's GPU time goes: one profiled call per stage, kernels grouped by what they do.

Kernel names are sorted into classes: GEMM (cuBLAS / nvjet / CUTLASS / Triton matmul templates),
attention (cuDNN SDPA, FlashAttention, memory-efficient FMHA), convolution (cuDNN implicit GEMM and
friends), fused (Inductor's Triton pointwise and reduction kernels, whatever ops they are named
after), elementwise (ATen's), reduction, copy / layout, other. For each stage: the wall time of the
call, the sum of kernel times (ms), the number of kernel launches, and time per class, plus the top
kernels. Kernel time well below wall time means the GPU idles between launches (launch- or
host-bound); a class's share says which kernels to fix. The stages are run through the runtime's
public per-stage API (`Pipeline.bucket`), at the build's longest duration for --batch.

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


def profile_call(fn: Callable[[], Any], warmup: int = 2, top: int = 8) -> dict[str, Any]:
    """Run fn `warmup` times, then once under the CUDA profiler: summarize_kernels plus wall_ms."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3
    kernels = [
        (ev.name, ev.device_time / 1e3)
        for ev in prof.events()
        if ev.device_type == torch.autograd.DeviceType.CUDA
    ]
    summary = summarize_kernels(kernels, top)
    summary["wall_ms"] = wall_ms  # includes the profiler's own overhead: compare shares, not times
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
