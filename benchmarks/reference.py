"""Profile the eager PyTorch reference: wall time and peak memory per component, hidden-state variance.

For one preset at batch 1: the text encoder, the DiT sampling loop (all steps, each at its budget),
the VAE decoder and the mono-to-stereo model are timed separately with benchmarks.measure's timer
(--repeats runs after one warm-up: median, p90 and min in ms, cv) and, on CUDA, their peak memory is
read from the caching allocator (MiB). The per-block hidden-state variance of the DiT (the paper's
Fig. 4) is recorded at several noise levels on one noisy latent. benchmarks.latency times the same
model (its eager-fp32 and eager-bf16 backends) beside the compiled engines.

examples:
  python -m benchmarks.reference --preset tiny --device cpu --duration-s 2
  python -m benchmarks.reference --preset presto-ls --device cuda --dtype bf16 --json ref-bf16.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.measure import Timer, free_memory, peak_memory, time_fn
from presto_common.names import PRECISIONS, torch_dtype

# The 4-step schedule's sigmas and points between.
SIGMAS_FOR_VARIANCE = (80.0, 9.723, 1.0, 0.47, 0.05, 0.002)


def hidden_variance(model, text, mask, bpm, num_frames: int, seed: int) -> dict[str, list[float]]:
    """Variance of the residual stream after each block, at budget 0, per noise level."""
    g = torch.Generator().manual_seed(seed)
    C = model.config.dit.latent_channels
    x0 = model.config.edm.sigma_data * torch.randn(1, C, num_frames, generator=g)
    noise = torch.randn(1, C, num_frames, generator=g)
    out: dict[str, list[float]] = {}
    variances: list[float] = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: variances.append(o.float().var().item()))
        for b in model.dit.blocks
    ]
    try:
        for sigma in SIGMAS_FOR_VARIANCE:
            variances.clear()
            x = (x0 + sigma * noise).to(model.device)
            model.denoise(x, sigma, text, mask, bpm, budget=0)
            out[f"{sigma:g}"] = list(variances)
    finally:
        for h in hooks:
            h.remove()
    return out


def profile(
    preset: str, device: torch.device, dtype: str, duration_s: float, repeats: int, seed: int
) -> dict:
    from presto_ref.checkpoint import random_model
    from presto_ref.pipeline import Request, validate_request

    model = random_model(preset, seed).to(device=device, dtype=torch_dtype(dtype)).eval()
    cfg = model.config
    request = Request(
        prompts=("warm lofi hip hop with piano and vinyl crackle",),
        seeds=(seed,),
        duration_s=duration_s,
    )
    sampler = validate_request(cfg, request)
    num_frames = cfg.frames_for_duration(duration_s)
    bpm = torch.full((1,), 120.0, device=device)
    timer = Timer(device)
    report: dict = {
        "preset": preset,
        "dtype": dtype,
        "device": str(device),
        "batch": 1,
        "frames": num_frames,
        "duration_s": cfg.duration_for_frames(num_frames),
        "sampler": {"kind": sampler.kind, "num_steps": sampler.num_steps, "rho": sampler.rho},
        "stages": {},
    }
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)

    def stage(name: str, fn):
        """Time fn (one warm-up, then `repeats` runs) with its peak memory; its warm-up output."""
        free_memory(device)
        with peak_memory(device) as mem:
            out = fn()
            row = time_fn(timer, lambda i: fn(), repeats, 0)
        report["stages"][name] = {**row, **mem}
        return out

    with torch.inference_mode():
        text, mask = stage("text_encoder", lambda: model.encode_text(request.prompts))
        latents = stage(
            "dit_sampling",
            lambda: model.sample_latents(text, mask, bpm, request.seeds, num_frames, sampler),
        )
        mono = stage("vae_decoder", lambda: model.decode(latents))
        stereo = stage("mono_to_stereo", lambda: model.to_stereo(mono))
        report["total_median_ms"] = sum(r["median_ms"] for r in report["stages"].values())
        report["weights_mib"] = (
            sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        )
        report["audio"] = {
            "rms": stereo.float().pow(2).mean().sqrt().item(),
            "peak": stereo.abs().max().item(),
            "side_rms": (stereo[:, 0] - stereo[:, 1]).float().pow(2).mean().sqrt().item() / 2,
            "finite": bool(stereo.isfinite().all()),
        }
        report["hidden_variance"] = hidden_variance(model, text, mask, bpm, num_frames, seed)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="presto-ls")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=PRECISIONS, default="bf16")
    p.add_argument("--duration-s", type=float, default=32.0)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per stage after one warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the report here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: --device cuda asked for, but CUDA is not available; use --device cpu",
            file=sys.stderr,
        )
        return 1
    # A true fp32 reference: no TF32 in matmuls or convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report = profile(args.preset, device, args.dtype, args.duration_s, args.repeats, args.seed)
    print(
        f"{report['preset']} {report['dtype']} on {report.get('gpu', report['device'])}: "
        f"{report['duration_s']:.3f} s audio, batch 1"
    )
    for name, row in report["stages"].items():
        mem = f"  peak {row['peak_mib']:9.1f} MiB" if row["peak_mib"] is not None else ""
        print(f"  {name:<16}{row['median_ms']:10.2f} ms median  {row['min_ms']:10.2f} ms min{mem}")
    print(f"  {'total':<16}{report['total_median_ms']:10.2f} ms")
    for sigma, var in report["hidden_variance"].items():
        print(f"  var(h) sigma={sigma:>6}: " + " ".join(f"{v:.2f}" for v in var))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
