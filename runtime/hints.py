"""The `python -m export.build` command that rebuilds a build folder, with what a request lacks.

Export records what a build came from (preset or checkpoint, init seed, backends, precision, device,
TensorRT flavor, quantization and calibration folder) in `manifest.build_env["source"]`; the buckets
and budgets come from its artifacts. The command asks for the new buckets first, then every one
already built, and writes into the same folder, so reuse makes everything but the new artifacts
free. A manifest without "source" (older builds) gets the model name as --preset and a note saying
so.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from presto_common.names import BACKENDS
from runtime.manifest import Manifest

CKPT_PLACEHOLDER = "CKPT_DIR"


def rebuild_command(
    manifest: Manifest,
    folder: str | Path,
    *,
    batch_sizes: Sequence[int] | None = None,
    durations_s: Sequence[float] | None = None,
    budgets: Sequence[int] | None = None,
    backends: Sequence[str] | None = None,
    precision: str | None = None,
    device: str | None = None,
) -> str:
    """A shell command that rebuilds `folder` with the given buckets added to those it has.

    precision and device replace the build's own (a build has one of each).
    """
    m, arts = manifest, manifest.artifacts
    source = m.build_env.get("source") or {}
    argv = ["python", "-m", "export.build"]
    # 1. The model.
    if source.get("checkpoint"):
        argv += ["--checkpoint", source["checkpoint"]]
    elif source.get("preset"):
        argv += ["--preset", source["preset"]]
        if source.get("init_seed"):
            argv += ["--init-seed", str(source["init_seed"])]
    elif source:  # built from a model object in Python: it has no name to rebuild it from
        argv += ["--checkpoint", CKPT_PLACEHOLDER]
    else:
        argv += ["--preset", m.model_name]
    # 2. Backends, precision and targets.
    kept = set(source.get("backends") or {a.backend for a in arts}) | set(backends or ())
    chosen = [b for b in BACKENDS if b in kept]
    argv += ["--backends", ",".join(chosen)]
    argv += ["--precision", precision or source.get("precision") or arts[0].precision]
    trt = m.build_env.get("tensorrt") or {}
    if "tensorrt" in chosen and trt.get("flavor"):
        argv += ["--trt", trt["flavor"]]
        if trt["flavor"] == "rtx" and trt.get("compute_capabilities"):
            argv += ["--compute-capabilities", ",".join(trt["compute_capabilities"])]
    built_device = source.get("device") or (
        "cuda" if any(a.file.endswith("-cuda.pt2") for a in arts) else "cpu"
    )
    if "torch" in chosen and (device or built_device) != "cpu":
        argv += ["--device", device or built_device]
    # 3. Buckets and budgets: the new ones first, then those built.
    decoders = [a for a in arts if a.component == "vae_decoder"]
    batches = _join([*(batch_sizes or ()), *sorted({a.batch for a in decoders})])
    frames = [m.sample_rate * d / m.hop_length for d in durations_s or ()]
    wanted = [round(f) for f in frames] + sorted({a.frames for a in decoders})
    seconds = _join(_seconds(m, f) for f in wanted)
    kept_budgets = {a.budget for a in arts if a.component == "dit"} | set(budgets or ())
    argv += ["--batch-sizes", batches, "--durations-s", seconds]
    if kept_budgets:
        argv += ["--budgets", _join(sorted(kept_budgets))]
    if source.get("quantization"):
        argv += ["--quantization", source["quantization"]]
        argv += ["--calibration", source.get("calibration") or "CALIBRATION_DIR"]
    if source.get("fp8_attention"):
        argv += ["--fp8-attention"]
    if source.get("verify") is False:
        argv += ["--no-verify"]
    argv += ["--out", str(folder)]
    return shlex.join(argv)


def rebuild_hint(manifest: Manifest, folder: str | Path, **added) -> str:
    """'`COMMAND`' from `rebuild_command`, plus a note when the model in it is a guess."""
    hint = f"`{rebuild_command(manifest, folder, **added)}`"
    source = manifest.build_env.get("source")
    if not source:
        hint += (
            f" ({folder} does not record what it was built from: if {manifest.model_name} is not "
            f"a preset, pass --checkpoint {CKPT_PLACEHOLDER} instead)"
        )
    elif not source.get("preset") and not source.get("checkpoint"):
        hint += (
            f" ({folder} was built from a model object: save it with "
            f"presto_ref.checkpoint.save_checkpoint and put that folder for {CKPT_PLACEHOLDER})"
        )
    return hint


def _join(items) -> str:
    """'2,1' from [2, 1, 2]: each once, in order."""
    return ",".join(str(x) for x in dict.fromkeys(items))


def _seconds(manifest: Manifest, frames: int) -> str:
    """The shortest '1.00'-style duration that export rounds back to `frames` latent frames."""
    sr, hop = manifest.sample_rate, manifest.hop_length
    exact = min(frames * hop / sr, manifest.max_duration_s)
    for digits in range(2, 10):
        text = f"{exact:.{digits}f}"
        if round(float(text) * sr / hop) == frames and 0 < float(text) <= manifest.max_duration_s:
            return text
    return repr(exact)
