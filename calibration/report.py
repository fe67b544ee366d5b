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
import math
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from calibration.trajectories import DiTCall, calibration_bpms, read_prompts, record_dit_calls
from export.folder import load_model
from export.verify import Parity, compare
from presto_common.cli import (
    add_logging_flags,
    check_device,
    check_json_output,
    run_main,
    setup_logging,
)
from presto_common.errors import ArtifactError, BackendUnavailable, InputError, ShapeError
from presto_common.names import TOOLKIT_VERSION
from presto_ref.pipeline import Presto
from runtime.hints import rebuild_hint
from runtime.pipeline import Pipeline

log = logging.getLogger(__name__)

# Held out from calibration/prompts.txt, so the report does not grade a calibration on its own data.
DEFAULT_PROMPTS = (
    "melancholic solo cello with room reverb",
    "energetic k-pop chorus with synth stabs and claps",
    "dusty boom bap beat with a jazz sample",
    "cinematic orchestral swell with timpani and choir",
)
REFERENCE = "reference-fp32"  # the label of the presto_ref model in tables and JSON


@dataclass(frozen=True)
class Build:
    """One build folder under test, opened for the chosen backend and device."""

    label: str  # the folder's name, made unique
    folder: Path
    pipe: Pipeline

    def describe(self) -> dict:
        """What its DiT engines are: precision, quantization, calibration sha256 (manifest)."""
        dits = self.pipe.catalog.found("dit")

        def one(name: str) -> list[str]:  # the values over its DiT artifacts, "None" for none
            return sorted({str(getattr(a, name, None)) for a in dits})

        return {
            "folder": str(self.folder),
            "backend": self.pipe.backend,
            "config_hash": self.pipe.manifest.config_hash,
            "precision": one("precision"),
            "quantization": one("quantization"),
            "calibration_sha256": one("calibration_sha256"),
            "source": self.pipe.manifest.build_env.get("source"),
        }


# --- opening the builds and the reference


def open_builds(engines: Path, against: Sequence[Path], backend: str, device: str) -> list[Build]:
    """--engines first, then each --against; refuses a folder without DiT engines, builds of
    another model (config hash) and bf16 graphs on ONNX Runtime before any engine is loaded."""
    builds: list[Build] = []
    for folder in (engines, *against):
        pipe = Pipeline(folder, backend=backend, device=device)
        label = folder.resolve().name or str(folder)
        while any(b.label == label for b in builds):
            label += "'"
        # ORT's CPU provider has no bf16 kernel for some of the graphs' ops (Where(16), seen on
        # the tiny build); refuse here rather than fail inside ONNX Runtime mid-report.
        if pipe.backend == "onnx" and any(
            a.backend == "onnx" and a.precision == "bf16" for a in pipe.manifest.artifacts
        ):
            raise BackendUnavailable(
                f"{folder} holds bf16 ONNX graphs, which ONNX Runtime's CPU provider cannot run; "
                f"grade it with --backend torch (its .pt2 packages) or --backend tensorrt, or pass "
                f"an fp32 build instead"
            )
        builds.append(Build(label, folder, pipe))
    first = builds[0].pipe
    if not first.catalog.found("dit"):
        components = sorted(
            {a.component for a in first.manifest.artifacts if a.backend == first.backend}
        )
        raise ArtifactError(
            f"--engines {engines} has no DiT artifacts for backend {first.backend} on "
            f"{first.device} (it has {components}); the report grades DiT engines: build them with "
            f"`python -m export.build ... --quantization int8 --calibration DIR --out {engines}`"
        )
    for b in builds[1:]:
        if b.pipe.manifest.config_hash != first.manifest.config_hash:
            raise ArtifactError(
                f"--against {b.folder} was built from model config {b.pipe.manifest.config_hash[:12]}"
                f" ({b.pipe.manifest.model_name}), --engines {engines} from "
                f"{first.manifest.config_hash[:12]} ({first.manifest.model_name}); identical inputs "
                f"need the same model: pass a build of it, e.g. "
                f"{rebuild_hint(first.manifest, b.folder, precision='bf16')}"
            )
    return builds


def reference_model(build: Build, device: str) -> Presto:
    """The fp32 presto_ref model a build was made from (its manifest's recorded source)."""
    manifest = build.pipe.manifest
    source = manifest.build_env.get("source") or {}
    if not (source.get("preset") or source.get("checkpoint")):
        raise ArtifactError(
            f"{build.folder}/manifest.json does not record a preset or checkpoint (source "
            f"{source or None}), so the fp32 reference cannot be rebuilt; rebuild the folder from "
            f"a preset or a saved checkpoint with `python -m export.build --checkpoint DIR ...`"
        )
    model = load_model(
        preset=source.get("preset"),
        checkpoint=source.get("checkpoint"),
        init_seed=source.get("init_seed") or 0,
    )
    if model.config.config_hash() != manifest.config_hash:
        where = source.get("checkpoint") or f"preset {source.get('preset')}"
        raise ArtifactError(
            f"{where} now has config hash {model.config.config_hash()[:12]}, but {build.folder} "
            f"was built from {manifest.config_hash[:12]}; the model changed since the build: "
            f"rebuild it with {rebuild_hint(manifest, build.folder)}"
        )
    return model.to(device).eval()


def request_batch(build: Build, frames: int, rows: int) -> int:
    """The request batch whose bucket runs the recorded calls: `rows` (takes per prompt) if built
    at `frames`, else 1 (rows one by one); ShapeError naming the fix otherwise."""
    built = build.pipe.built_buckets()
    for batch in (rows, 1):
        if (batch, frames) in built:
            return batch
    seconds = build.pipe.catalog.seconds(frames)
    fix = rebuild_hint(build.pipe.manifest, build.folder, batch_sizes=(1,), durations_s=(seconds,))
    raise ShapeError(
        f"{build.folder} has no bucket at batch {rows} or 1 with {frames} frames ({seconds:.2f} s) "
        f"on {build.pipe.backend} (built (batch, frames): {built}); rebuild with {fix}"
    )


# --- 1. the DiT, step by step


@torch.no_grad()
def dit_outputs(
    build: Build, calls: Sequence[DiTCall], frames: int, num_takes: int
) -> list[torch.Tensor]:
    """x0 of `build`'s DiT engine of each call's budget on the call's own inputs, float32 CPU.

    A call holds the rows of num_takes takes (2 x num_takes for dpmpp-2s: [cond; uncond]); they run
    in DiT calls of the bucket's dit_batch rows.
    """
    batch = request_batch(build, frames, num_takes)
    bucket = build.pipe.bucket(batch, build.pipe.catalog.seconds(frames), stereo=False)
    device, n = build.pipe.device, bucket.dit_batch
    out = []
    for call in calls:
        assert call.x.shape[0] % n == 0, f"{call.x.shape[0]} rows do not split into calls of {n}"
        chunks = []
        for i in range(0, call.x.shape[0], n):
            x, text, mask, bpm = (
                t[i : i + n].to(device) for t in (call.x, call.text, call.text_mask, call.bpm)
            )
            x0 = bucket.denoise(x, float(call.sigma[0]), text, mask, bpm, call.budget)
            chunks.append(x0.to("cpu", torch.float32).clone())  # an engine may reuse its buffer
        out.append(torch.cat(chunks))
    return out


@torch.no_grad()
def reference_outputs(model: Presto, calls: Sequence[DiTCall]) -> list[torch.Tensor]:
    """x0 of the fp32 reference DiT on each call's inputs (what its sampler computed), on the CPU."""
    device = model.device
    return [
        model.denoiser(
            c.x.to(device),
            c.sigma.to(device),
            text=c.text.to(device),
            text_mask=c.text_mask.to(device),
            bpm=c.bpm.to(device),
            budget=c.budget,
        )
        .float()
        .cpu()
        for c in calls
    ]


def pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """(test, baseline) pairs: every build against the reference, then --engines (labels[0])
    against each --against build."""
    out = [(label, REFERENCE) for label in labels]
    return out + [(labels[0], other) for other in labels[1:]]


def summarize(tests: Sequence[torch.Tensor], baselines: Sequence[torch.Tensor]) -> dict:
    """Parity pooled over every row (take) of the calls, and the worst row's."""
    tests, baselines = torch.cat(tests), torch.cat(baselines)
    pooled = compare(baselines.numpy(), tests.numpy())
    worst = [compare(b.numpy(), t.numpy()) for t, b in zip(tests, baselines)]
    return {
        "cosine": pooled.cosine,
        "rel_l2": pooled.rel_l2,
        "worst_cosine": min(p.cosine for p in worst),
        "worst_rel_l2": max(p.rel_l2 for p in worst),
    }


def dit_report(
    model: Presto,
    builds: Sequence[Build],
    calls: Sequence[DiTCall],
    num_prompts: int,
    num_takes: int,
    frames: int,
) -> list[dict]:
    """One row per DiT evaluation of a trajectory, in sampling order ("step"; for ping-pong the
    sampler's steps): calls are num_prompts trajectories of num_takes takes each, in turn."""
    x0 = {REFERENCE: reference_outputs(model, calls)}
    for b in builds:
        x0[b.label] = dit_outputs(b, calls, frames, num_takes)
    per_trajectory = len(calls) // num_prompts
    report = []
    for step in range(per_trajectory):
        idx = [p * per_trajectory + step for p in range(num_prompts)]
        call = calls[idx[0]]
        report.append(
            {
                "step": step,
                "sigma": float(call.sigma[0]),
                "budget": call.budget,
                "x0": {
                    f"{t} vs {r}": summarize([x0[t][i] for i in idx], [x0[r][i] for i in idx])
                    for t, r in pairs([b.label for b in builds])
                },
            }
        )
    return report


# --- 2. the audio, end to end


def snr_db(parity: Parity) -> float | None:
    """SNR = -20 log10(relative L2) in dB; None for identical signals (JSON has no infinity)."""
    return None if parity.rel_l2 == 0 else -20 * math.log10(parity.rel_l2)


def snr_summary(tests: Sequence[torch.Tensor], baselines: Sequence[torch.Tensor]) -> dict:
    """SNR (dB) pooled over the takes (tensors of one take each), and the worst take's."""
    snrs = [snr_db(compare(b.numpy(), t.numpy())) for t, b in zip(tests, baselines)]
    pooled = compare(torch.stack(baselines).numpy(), torch.stack(tests).numpy())
    return {"snr_db": snr_db(pooled), "worst_snr_db": None if None in snrs else min(snrs)}


@torch.no_grad()
def audio_report(
    model: Presto,
    builds: Sequence[Build],
    prompts: Sequence[str],
    seeds: Sequence[int],
    frames: int,
) -> dict:
    """SNR (dB) of each build's stereo audio, and of the latents it decoded, against the reference
    (and --engines' against each --against build's), with the same prompts, BPMs and noise.

    The latents' SNR is the sampler's (the DiT's error compounded over the steps); the audio's adds
    what the VAE decoder and the mono-to-stereo model make of it.
    """
    config, device = model.config, model.device
    sampler = config.sampler
    bpms = calibration_bpms(config.bpm_range, len(prompts))  # as record_dit_calls uses
    latents: dict[str, list[torch.Tensor]] = {REFERENCE: []}
    audio: dict[str, list[torch.Tensor]] = {REFERENCE: []}
    for prompt, bpm in zip(prompts, bpms):
        # 1. The reference: Presto.generate's chain, keeping the latents.
        text, mask = model.encode_text((prompt,) * len(seeds))
        bpm_t = torch.full((len(seeds),), bpm, device=device)
        x = model.sample_latents(text, mask, bpm_t, seeds, frames, sampler)
        latents[REFERENCE] += list(x.float().cpu())
        audio[REFERENCE] += list(model.to_stereo(model.decode(x)).float().cpu())
        # 2. Each build's bucket (text encoder, sampler, decoder, stereo), takes in its batch.
        for b in builds:
            batch = request_batch(b, frames, len(seeds))
            bucket = b.pipe.bucket(batch, b.pipe.catalog.seconds(frames))
            for i in range(0, len(seeds), batch):
                chunk = seeds[i : i + batch]
                text, mask = bucket.encode_text([prompt] * batch)
                bpm_b = torch.full((batch,), bpm, device=b.pipe.device)
                width = torch.ones(batch, device=b.pipe.device)  # the model's own stereo image
                x, y = bucket.run(text, mask, bpm_b, width, bucket.noise(chunk))
                latents.setdefault(b.label, []).extend(x.float().cpu())
                audio.setdefault(b.label, []).extend(y.float().cpu())
    out = {}
    for t, r in pairs([b.label for b in builds]):
        out[f"{t} vs {r}"] = {
            "latents": snr_summary(latents[t], latents[r]),
            "audio": snr_summary(audio[t], audio[r]),
        }
    return out


# --- the command


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
    for label, b in report["builds"].items():
        lines.append(
            f"  {label}: {b['folder']}  precision {','.join(b['precision'])}  quantization "
            f"{','.join(b['quantization'])}  calibration {','.join(s[:12] for s in b['calibration_sha256'])}"
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
