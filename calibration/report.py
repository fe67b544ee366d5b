"""What quantizing the DiT cost in fidelity: a build's DiT step by step, and its audio end to end.

The fp32 reference is the presto_ref model the build was made from (the manifest's recorded preset
and init seed, or checkpoint), run in fp32 on --device. It samples --seeds takes of each prompt
(its own sampler, default schedule) while every DiT input is recorded; then:

1. Per DiT evaluation (step) and layer budget: the recorded inputs go, unchanged, to the --engines
   build's DiT of that budget, to each --against build's (e.g. the bf16 and fp32 builds of the same
   model) and to the fp32 reference DiT. Cosine similarity and relative L2 error of x0 (pooled over
   all takes; the worst take beside) of --engines against the reference and against each --against
   build, and of each --against build against the reference for context.
2. End to end: each build's `runtime.Pipeline` buckets and the reference generate the same prompts,
   BPMs and seeds (the same noise, bit for bit): the SNR in dB of the stereo audio against the fp32
   reference and against each --against build, and of the latents the audio was decoded from (the
   DiT's error compounded over the steps, before the VAE decoder adds its own sensitivity).

A table goes to stdout, then one line of JSON (--json also writes it to a file) with the git commit,
the machine, the backend and each build's precision, quantization and calibration sha256.

What random weights imply. Every preset here is a seeded random init, not a trained model, so these
figures measure the quantization error of random-init activations through the graphs, not the
perceived quality of music: the audio is noise-like, and an SNR says how close two noise-like
signals are, not whether a listener would hear a difference. A trained DiT has outlier channels
(large, consistent activations in a few channels) that random weights lack; those outliers are what
SmoothQuant migrates into the weights, so its benefit, and the INT8/FP8 error itself, may be larger
or smaller on a trained checkpoint. The VAE decoder is random too, so how much a latent error grows
in the audio is a property of random convolutions, not of a trained decoder (on the tiny preset the
INT8 latents at ~36 dB SNR decode to audio at ~25 dB); hence the latents' SNR beside the audio's.
Re-run this report on a real checkpoint before drawing conclusions about a product.

examples:
  python -m calibration.report --engines artifacts/tiny-int8 --against artifacts/tiny-fp32
  python -m calibration.report --engines artifacts/ls-fp8 --against artifacts/ls-bf16 \\
      --against artifacts/ls-fp32 --backend torch --device cuda --json fp8-report.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from calibration.fidelity import (
    REFERENCE,
    audio_report,
    dit_report,
    open_builds,
    reference_model,
    request_batch,
)
from calibration.trajectories import read_prompts, record_dit_calls
from presto_common.cli import (
    add_logging_flags,
    check_device,
    check_json_output,
    run_main,
    setup_logging,
)
from presto_common.errors import InputError
from presto_common.names import TOOLKIT_VERSION

log = logging.getLogger(__name__)

# Held out from calibration/prompts.txt, so the report does not grade a calibration on its own data.
DEFAULT_PROMPTS = (
    "melancholic solo cello with room reverb",
    "energetic k-pop chorus with synth stabs and claps",
    "dusty boom bap beat with a jazz sample",
    "cinematic orchestral swell with timpani and choir",
)


def environment(device: str) -> dict:
    """The git commit and the machine the report ran on."""
    here = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=30
        )
        commit = proc.stdout.strip() if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("git rev-parse failed (%s); the commit is recorded as null", err)
        commit = None
    cuda = device.startswith("cuda")
    return {
        "git_commit": commit,
        "presto_trt": TOOLKIT_VERSION,
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "torch": torch.__version__,
    }


def run_report(args: argparse.Namespace, prompts: Sequence[str]) -> dict:
    """Steps 1-2 of the module docstring; the JSON document."""
    builds = open_builds(args.engines, args.against, args.backend, args.device)
    model = reference_model(builds[0], args.device)
    frames = builds[0].pipe.frames_for(args.duration_s)
    duration_s = builds[0].pipe.catalog.seconds(frames)
    seeds = tuple(range(args.seeds))
    for b in builds:
        request_batch(b, frames, len(seeds))  # every bucket before the sampler runs
    assert model.config.frames_for_duration(duration_s) == frames, "frame rounding differs"
    calls = record_dit_calls(model, prompts, seeds, duration_s)
    log.info("recorded %d DiT calls; running them on %d builds", len(calls), len(builds))
    steps = dit_report(model, builds, calls, len(prompts), len(seeds), frames)
    log.info("DiT compared; generating audio end to end")
    return {
        "model": builds[0].pipe.manifest.model_name,
        "config_hash": builds[0].pipe.manifest.config_hash,
        "backend": builds[0].pipe.backend,
        "device": args.device,
        "prompts": list(prompts),
        "seeds": list(seeds),
        "duration_s": duration_s,
        "frames": frames,
        "builds": {b.label: b.describe() for b in builds},
        "reference": {"label": REFERENCE, "precision": "fp32", "device": args.device},
        "dit_steps": steps,
        "sampling": audio_report(model, builds, prompts, seeds, frames),
        "environment": environment(args.device),
        "note": "random-init weights: figures are the quantization error of random activations, "
        "not perceived audio quality (see `python -m calibration.report --help`)",
    }


def format_table(report: dict) -> str:
    """The report as aligned text: builds, x0 per step, then audio SNR."""
    lines = [
        f"{report['model']} on {report['backend']} ({report['device']}), "
        f"{len(report['prompts'])} prompts x {len(report['seeds'])} seeds, "
        f"{report['duration_s']:.2f} s"
    ]

    def values(items: list, width: int | None = None) -> str:
        return ",".join("none" if v is None else str(v)[:width] for v in items)

    for label, b in report["builds"].items():
        lines.append(
            f"  {label}: {b['folder']}  precision {values(b['precision'])}  quantization "
            f"{values(b['quantization'])}  calibration {values(b['calibration_sha256'], 12)}"
        )
    names = list(report["dit_steps"][0]["x0"])
    width = max(len(n) for n in names)
    lines.append("")
    lines.append(
        f"{'step':>4} {'sigma':>9} {'budget':>6}  {'x0 of':<{width}}  "
        f"{'cosine':>10} {'rel L2':>9} {'worst cos':>10} {'worst L2':>9}"
    )
    for row in report["dit_steps"]:
        for i, (name, s) in enumerate(row["x0"].items()):
            head = (
                f"{row['step']:>4} {row['sigma']:>9.4g} {row['budget']:>6}" if i == 0 else " " * 21
            )
            lines.append(
                f"{head}  {name:<{width}}  {s['cosine']:>10.6f} {s['rel_l2']:>9.2e} "
                f"{s['worst_cosine']:>10.6f} {s['worst_rel_l2']:>9.2e}"
            )
    lines.append("")
    lines.append(
        f"{'SNR dB, same noise':<{width}}  {'latents':>9} {'worst':>9}  {'audio':>9} {'worst':>9}"
    )

    def db(value: float | None) -> str:
        return "identical" if value is None else f"{value:.2f}"

    for name, s in report["sampling"].items():
        lat, aud = s["latents"], s["audio"]
        lines.append(
            f"{name:<{width}}  {db(lat['snr_db']):>9} {db(lat['worst_snr_db']):>9}  "
            f"{db(aud['snr_db']):>9} {db(aud['worst_snr_db']):>9}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m calibration.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--engines",
        type=Path,
        required=True,
        metavar="DIR",
        help="the build to grade (usually one with quantized DiT engines)",
    )
    p.add_argument(
        "--against",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a build of the same model to compare with (bf16, fp32); repeatable",
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="auto, onnxruntime, torch or tensorrt: the artifacts run in every build",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: engines and reference")
    p.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE",
        help="text file, one prompt a line (default: 4 prompts held out from "
        "calibration/prompts.txt)",
    )
    p.add_argument(
        "--seeds", type=int, default=2, metavar="N", help="takes per prompt, seeds 0..N-1"
    )
    p.add_argument(
        "--duration-s",
        type=float,
        metavar="S",
        help="seconds per take, a built bucket (default: --engines' longest)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here")
    add_logging_flags(p)
    return p


def check_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """Flag errors before anything is loaded; returns the prompts."""
    if not 1 <= args.seeds <= 64:
        raise InputError(
            f"--seeds {args.seeds} is outside [1, 64] (takes per prompt); e.g. --seeds 2"
        )
    if args.duration_s is not None and not args.duration_s > 0:
        raise InputError(f"--duration-s {args.duration_s} must be a positive number of seconds")
    check_device(args.device)
    if args.json is not None:
        check_json_output(args.json)
    return DEFAULT_PROMPTS if args.prompts is None else read_prompts(args.prompts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging(args)
    if args.device.startswith("cuda"):  # a true fp32 reference: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def body() -> list[Path]:
        report = run_report(args, check_flags(args))
        doc = json.dumps(report)
        print(format_table(report))
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(doc)
        return [args.json] if args.json else []

    return run_main(
        body,
        argv,
        {
            "engines": args.engines,
            "against": args.against,
            "backend": args.backend,
            "device": args.device,
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
