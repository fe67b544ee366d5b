"""Compile the paper-scale DiT b0 under a few Inductor settings and compare speed and error.

  python scripts/gpu_dit_variants.py --json variants.json

For each variant: which attention kernel the exported graph calls, compile time, whether the package
runs, its median latency (CUDA events, 20 runs after 5 warm-ups) and its relative L2 error against the
fp32 eager DiT on the GPU (TF32 off); a profiler breakdown of one variant (--profile); then the bf16
VAE decoder and mono-to-stereo packages compiled, timed and profiled the same way.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.measure import Timer, time_fn
from benchmarks.profile import format_profile, profile_call
from export.spec import export_model, graph_for
from export.torch_backend import compile_package
from presto_ref.checkpoint import random_model
from runtime.torch_engine import TorchEngine

VARIANTS = {
    "bf16_padding_on": ("bf16", {"comprehensive_padding": True}),
    "bf16_padding_off": ("bf16", {"comprehensive_padding": False}),
    "fp32_padding_off": ("fp32", {"comprehensive_padding": False}),
}


def time_ms(fn, runs: int = 20, warmup: int = 5) -> float:
    """Median CUDA-event time of fn() in ms (benchmarks.measure's timer)."""
    return time_fn(Timer(torch.device("cuda")), lambda i: fn(), runs, warmup)["median_ms"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--json", type=Path)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--profile", default="bf16_padding_off", help="variant to profile")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    model = random_model("presto-ls", 0).eval()
    g = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, 32, 1470, generator=g),
        torch.ones(1),
        torch.randn(1, 128, 768, generator=g),
        torch.arange(128)[None] < 24,
        torch.full((1,), 120.0),
    )
    inputs = tuple(t.to(dev) for t in inputs)
    with torch.no_grad():
        ref = graph_for(model.to(dev), "dit", 0)(*inputs).float()
    model.cpu()
    report: dict = {}
    tmp = Path(tempfile.mkdtemp())
    for name in args.variants.split(","):
        precision, options = VARIANTS[name]
        low = export_model(model, precision).to(dev)
        graph = graph_for(low, "dit", 0)
        row: dict = {"precision": precision, "options": options}
        with torch.no_grad():
            ep = torch.export.export(graph, inputs)
        row["attention_ops"] = sorted(
            {str(n.target) for n in ep.graph.nodes if "attention" in str(n.target)}
        )
        start = time.perf_counter()
        try:
            build = compile_package(
                graph, inputs, tmp / f"{name}.pt2", device="cuda", options=options
            )
            row["compile_s"] = time.perf_counter() - start
            engine = TorchEngine(build.path, device="cuda")
            out = engine(*inputs)[0]
            row["rel_l2_vs_fp32_eager"] = ((out.float() - ref).norm() / ref.norm()).item()
            row["median_ms"] = time_ms(lambda e=engine: e(*inputs))
            if name == args.profile:
                row["profile"] = profile_call(lambda e=engine: e(*inputs), top=15)
                print(format_profile(name, row["profile"]), flush=True)
        except Exception as err:  # noqa: BLE001  a failed variant is a result; the others still run
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        print(name, row, flush=True)
        report[name] = row
        del low, graph
        torch.cuda.empty_cache()
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    # The convolution stages in bf16 with padding off: where their time goes.
    low = export_model(model, "bf16").to(dev)
    lat = torch.randn(1, 32, 1470, device=dev)
    mono = 0.2 * torch.randn(1, 1, 1470 * 960, device=dev)
    for component, sample in (
        ("vae_decoder", (lat,)),
        ("stereo", (mono, torch.ones(1, device=dev))),
    ):
        build = compile_package(
            graph_for(low, component),
            sample,
            tmp / f"{component}.pt2",
            device="cuda",
            options={"comprehensive_padding": False},
        )
        engine = TorchEngine(build.path, device="cuda")
        row = {"median_ms": time_ms(lambda e=engine, x=sample: e(*x))}
        row["profile"] = profile_call(lambda e=engine, x=sample: e(*x), top=15)
        print(component, f"{row['median_ms']:.3f} ms", flush=True)
        print(format_profile(component, row["profile"]), flush=True)
        report[component + "_bf16"] = row
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
