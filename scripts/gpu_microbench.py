"""Kernel-level measurements behind the DiT's speed and bf16 error on this GPU (paper-scale shapes).

  python scripts/gpu_microbench.py --json micro.json

1. GEMMs at the DiT's shapes (M = 1470 audio tokens, D = 1152, FFN 3072, 128 text tokens): the
   projections as the reference runs them (q on audio; k, v on [audio; text]; w1, w3 apart) against
   fused forms (one [q|k|v] GEMM on audio plus [k|v] on text; [w1|w3] in one GEMM), beside the
   8192^3 matmul rate.
2. Attention (1, 16, 1470 queries, 1598 keys, head 72) with each SDPA backend that accepts it: with
   the padding mask (efficient, cuDNN, math) and without (flash), so the mask's cost is visible.
3. The eager bf16 DiT b0 on the GPU against fp32: relative L2 with the default settings, with
   reduced-precision bf16 GEMM reductions off, and with the math attention; CPU bf16 beside it.
4. Where the eager bf16 DiT b0's GPU time goes (profiler, by kernel).
5. The eager bf16 VAE decoder and mono-to-stereo model with cudnn.benchmark off and on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.measure import Timer, time_fn

dev = torch.device("cuda")
bf16 = torch.bfloat16


def time_ms(fn, runs: int = 20, warmup: int = 5) -> float:
    """Median CUDA-event time of fn() in ms (benchmarks.measure's timer)."""
    return time_fn(Timer(torch.device("cuda")), lambda i: fn(), runs, warmup)["median_ms"]


def gemms(report: dict) -> None:
    T, S, D, H = 1470, 128, 1152, 3072
    a = torch.randn(T, D, device=dev, dtype=bf16)
    t = torch.randn(S, D, device=dev, dtype=bf16)
    at = torch.cat([a, t])
    w = {n: torch.randn(D, D, device=dev, dtype=bf16) * D**-0.5 for n in "qkvo"}
    w1, w3 = (torch.randn(D, H, device=dev, dtype=bf16) * D**-0.5 for _ in range(2))
    w2 = torch.randn(H, D, device=dev, dtype=bf16) * H**-0.5
    wqkv = torch.cat([w["q"], w["k"], w["v"]], 1)
    wkv = torch.cat([w["k"], w["v"]], 1)
    w13 = torch.cat([w1, w3], 1)
    h = torch.randn(T, H, device=dev, dtype=bf16)
    n = 8192
    big = torch.randn(n, n, device=dev, dtype=bf16)
    rows = {
        "matmul_8192": (lambda: big @ big, 2 * n**3),
        "q_k_v_apart": (
            lambda: (a @ w["q"], at @ w["k"], at @ w["v"]),
            2 * D * D * (T + 2 * (T + S)),
        ),
        "qkv_fused_plus_text_kv": (lambda: (a @ wqkv, t @ wkv), 2 * D * D * (3 * T + 2 * S)),
        "o": (lambda: a @ w["o"], 2 * T * D * D),
        "w1_w3_apart": (lambda: (a @ w1, a @ w3), 4 * T * D * H),
        "w13_fused": (lambda: a @ w13, 4 * T * D * H),
        "w2": (lambda: h @ w2, 2 * T * D * H),
    }
    out = {}
    for name, (fn, flop) in rows.items():
        ms = time_ms(fn)
        out[name] = {"ms": ms, "tflops": flop / ms / 1e9}
        print(f"gemm {name:<24} {ms:8.4f} ms {flop / ms / 1e9:8.1f} TFLOP/s", flush=True)
    report["gemm"] = out


def attention(report: dict) -> None:
    B, Hn, T, S, d = 1, 16, 1470, 128, 72
    q = torch.randn(B, Hn, T, d, device=dev, dtype=bf16)
    k = torch.randn(B, Hn, T + S, d, device=dev, dtype=bf16)
    v = torch.randn_like(k)
    mask = torch.ones(B, 1, 1, T + S, dtype=torch.bool, device=dev)
    mask[..., T + 20 :] = False
    flop = 4 * B * Hn * T * (T + S) * d
    out = {}
    cases = [
        ("efficient_mask", SDPBackend.EFFICIENT_ATTENTION, mask),
        ("cudnn_mask", SDPBackend.CUDNN_ATTENTION, mask),
        ("math_mask", SDPBackend.MATH, mask),
        ("flash_nomask", SDPBackend.FLASH_ATTENTION, None),
        ("cudnn_nomask", SDPBackend.CUDNN_ATTENTION, None),
        ("efficient_nomask", SDPBackend.EFFICIENT_ATTENTION, None),
    ]
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    for name, backend, m in cases:
        try:
            with sdpa_kernel([backend]):
                fn = lambda m=m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)  # noqa: E731
                y = fn()
                ms = time_ms(fn)
            err = None
            if m is not None:
                err = ((y.float() - ref).norm() / ref.norm()).item()
            out[name] = {"ms": ms, "tflops": flop / ms / 1e9, "rel_l2_vs_fp32": err}
            print(
                f"attn {name:<18} {ms:8.4f} ms {flop / ms / 1e9:8.1f} TFLOP/s err {err}", flush=True
            )
        except RuntimeError as e:  # this backend refuses these shapes or the mask
            out[name] = {"error": str(e).splitlines()[0][:200]}
            print(f"attn {name:<18} refused: {out[name]['error']}", flush=True)
    report["attention"] = out


def dit_error_and_profile(report: dict) -> None:
    from export.spec import export_model, graph_for
    from presto_ref.checkpoint import random_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = random_model("presto-ls", 0).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 32, 1470, generator=g)
    text = torch.randn(1, 128, 768, generator=g)
    mask = torch.zeros(1, 128, dtype=torch.bool)
    mask[:, :24] = True
    sigma, bpm = torch.ones(1), torch.full((1,), 120.0)
    cpu_in = (x, sigma, text, mask, bpm)
    gpu_in = tuple(t.to(dev) for t in cpu_in)
    low = export_model(model, "bf16")
    with torch.no_grad():
        cpu_bf16 = graph_for(low, "dit", 0)(*cpu_in)
        ref = graph_for(model.to(dev), "dit", 0)(*gpu_in)
        model.cpu()
        low_gpu = graph_for(low.to(dev), "dit", 0)
        rel = lambda y: ((y.float().cpu() - ref.cpu()).norm() / ref.cpu().norm()).item()  # noqa: E731
        errs = {"cpu_bf16": rel(cpu_bf16), "gpu_bf16_default": rel(low_gpu(*gpu_in))}
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        errs["gpu_bf16_no_reduced_reduction"] = rel(low_gpu(*gpu_in))
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
        with sdpa_kernel([SDPBackend.MATH]):
            errs["gpu_bf16_math_attention"] = rel(low_gpu(*gpu_in))
        print("DiT b0 bf16 rel L2 vs GPU fp32:", errs, flush=True)
        report["dit_b0_bf16_rel_l2"] = errs
        report["dit_b0_eager_bf16_ms"] = time_ms(lambda: low_gpu(*gpu_in), runs=10)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            low_gpu(*gpu_in)
            torch.cuda.synchronize()
    kernels: dict[str, list] = {}
    for ev in prof.events():
        if ev.device_type.name == "CUDA":
            k = kernels.setdefault(ev.name[:90], [0, 0.0])
            k[0] += 1
            k[1] += ev.device_time / 1e3
    top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:25]
    total = sum(v[1] for v in kernels.values())
    launches = sum(v[0] for v in kernels.values())
    print(f"eager bf16 DiT b0 profile: {total:.2f} ms of kernels, {launches} launches")
    for name, (n, ms) in top:
        print(f"  {ms:8.3f} ms {n:5d}x {name}")
    report["dit_b0_eager_bf16_profile"] = {
        "total_kernel_ms": total,
        "top": [{"kernel": k, "count": n, "ms": ms} for k, (n, ms) in top],
    }


def convs(report: dict) -> None:
    from export.spec import export_model, graph_for
    from presto_ref.checkpoint import random_model

    low = export_model(random_model("presto-ls", 0), "bf16").to(dev)
    lat = torch.randn(1, 32, 1470, device=dev)
    mono = torch.randn(1, 1, 1470 * 960, device=dev) * 0.2
    width = torch.ones(1, device=dev)
    dec, st = graph_for(low, "vae_decoder"), graph_for(low, "stereo")
    out = {}
    with torch.no_grad():
        for flag in (False, True):
            torch.backends.cudnn.benchmark = flag
            out[f"vae_decoder_benchmark_{flag}"] = time_ms(lambda: dec(lat), runs=10, warmup=3)
            out[f"stereo_benchmark_{flag}"] = time_ms(lambda: st(mono, width), runs=10, warmup=3)
    torch.backends.cudnn.benchmark = False
    print("eager bf16 convolution stages, ms:", out, flush=True)
    report["conv_stages_eager_bf16_ms"] = out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    for part in (gemms, attention, dit_error_and_profile, convs):
        try:
            part(report)
        except Exception as e:  # noqa: BLE001  one failed part must not hide the others' figures
            report[part.__name__ + "_error"] = repr(e)
            print(f"{part.__name__} failed: {e!r}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
