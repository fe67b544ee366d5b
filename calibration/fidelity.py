"""The measurements behind `python -m calibration.report`: builds opened for grading, the fp32
reference rebuilt from a build's manifest, x0 per DiT step on identical inputs, and the SNR of
latents and audio end to end with identical noise. calibration/report.py says what they mean and
what random weights imply for them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from calibration.trajectories import DiTCall, calibration_bpms
from export.folder import load_model
from export.verify import Parity, compare
from presto_common.errors import ArtifactError, BackendUnavailable, ShapeError
from presto_ref.pipeline import Presto
from runtime.hints import rebuild_hint
from runtime.pipeline import Pipeline

log = logging.getLogger("calibration.report")

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

        def one(name: str) -> list:  # the distinct values over its DiT artifacts (None: null)
            values = {getattr(a, name, None) for a in dits}
            return sorted(values - {None}) + ([None] if None in values else [])

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
            # copies, not views: a row slice of a recording on the build's device would reach an
            # AOTInductor package unaligned (it warns "not aligned at run time" and copies anyway)
            x, text, mask, bpm = (
                t[i : i + n].to(device, copy=True)
                for t in (call.x, call.text, call.text_mask, call.bpm)
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
