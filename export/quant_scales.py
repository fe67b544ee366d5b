"""The calibration folder: per budget and per Linear layer of the DiT, the ranges quantization needs.

    DIR/
      scales.safetensors   tensors "b{budget}/{layer}/{field}", layer named as in presto_ref's DiT
                           (e.g. "b0/blocks.1.attn.q/input_amax"); a block's attention ranges
                           under "b{budget}/blocks.{i}.attn.sdpa/{q,k,v,o}_amax"
      calibration.json     a readable summary: precision, config hash, prompts, seeds, sigmas and
                           budgets, per-layer ranges, tool versions, and the sha256 of the scales file

The folder is written under a temporary name beside DIR and renamed into place, so a failed run
leaves no half-written folder; DIR may only replace an earlier calibration or an empty folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from presto_common.errors import ArtifactError, OutputError
from presto_common.files import read_json
from presto_common.names import QUANTIZATIONS

SCALES_FILE = "scales.safetensors"
SUMMARY_FILE = "calibration.json"
FORMAT = "presto-calibration"
FORMAT_VERSION = 1
# FP8 tensor cores: Ada (8.9) and later. torch._scaled_mm needs them, and TensorRT-RTX refuses FP8
# for 8.0; export.plan and export.quant_torch both check against this.
FP8_MIN_CAPABILITY = (8, 9)
FIELDS = ("input_amax", "weight_amax", "smooth", "input_channel_amax")
SDPA = ".sdpa"  # suffix of the pseudo-layer that holds a block's attention ranges
SDPA_FIELDS = ("q_amax", "k_amax", "v_amax", "o_amax")
# SmoothQuant's migration strength: 0.5 splits the range of outlier channels evenly between
# activation and weight (SmoothQuant, section 4.2: the sweet spot for most models). ModelOpt's
# recipe (calibration/recipes.py) uses it, and so do the shared factors of export/quant_onnx.py.
SMOOTHQUANT_ALPHA = 0.5


@dataclass(frozen=True)
class LayerScales:
    """What one Linear y = x W^T + b needs to be quantized; W: (N, K). All float32.

    With SmoothQuant (int8) the layer computes (x * smooth) (W / smooth)^T, the same product, and
    both amaxes are of the smoothed operands (x * smooth and W / smooth).
    """

    input_amax: Tensor  # () abs-max of the layer's input over the calibration data
    weight_amax: Tensor  # (N,) per output channel (int8) or () per tensor (fp8)
    smooth: Tensor | None = None  # (K,) SmoothQuant factor that multiplies x; int8 only
    input_channel_amax: Tensor | None = None  # (K,) abs-max per input channel, unsmoothed; int8


@dataclass(frozen=True)
class AttentionRanges:
    """The abs-max ranges () of one block's attention operands over the calibration data, as the
    attention sees them: q and k after the rotary embedding, k and v over the valid keys only,
    o the attention output (what FP8 attention quantizes: runtime/fp8_attention.py). float32."""

    q_amax: Tensor
    k_amax: Tensor
    v_amax: Tensor
    o_amax: Tensor


@dataclass(frozen=True)
class Calibration:
    """Scales of every calibrated budget of one model config, for one precision."""

    precision: str  # "int8" or "fp8"
    config_hash: str  # PrestoConfig.config_hash() of the calibrated model
    budgets: dict[int, dict[str, LayerScales]]  # budget -> layer name -> scales
    # budget -> attention module ("blocks.3.attn") -> ranges; empty in calibrations made before
    attention: dict[int, dict[str, AttentionRanges]] = field(default_factory=dict)

    def layers(self, budget: int) -> dict[str, LayerScales]:
        """The scales of one budget; ArtifactError naming the calibrated budgets otherwise."""
        if budget not in self.budgets:
            raise ArtifactError(
                f"budget {budget} was not calibrated (calibrated: {sorted(self.budgets)}); "
                "calibrate a model whose schedule uses it"
            )
        return self.budgets[budget]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_tensors(calibration: Calibration) -> dict[str, Tensor]:
    """Flat safetensors dict "b{budget}/{layer}/{field}" -> contiguous float32 tensor."""
    flat = {}
    entries = [
        (b, name, s, FIELDS) for b, ls in calibration.budgets.items() for name, s in ls.items()
    ]
    entries += [
        (b, name + SDPA, r, SDPA_FIELDS)
        for b, rs in calibration.attention.items()
        for name, r in rs.items()
    ]
    for budget, layer, scales, names in entries:
        for name in names:
            value = getattr(scales, name)
            if value is not None:
                flat[f"b{budget}/{layer}/{name}"] = value.detach().float().cpu().contiguous()
    return flat


def from_tensors(
    flat: dict[str, Tensor],
) -> tuple[dict[int, dict[str, LayerScales]], dict[int, dict[str, AttentionRanges]]]:
    """The inverse of to_tensors: (Calibration.budgets, Calibration.attention)."""
    fields: dict[int, dict[str, dict[str, Tensor]]] = {}
    for key, value in flat.items():
        budget, layer, name = key.split("/")
        fields.setdefault(int(budget[1:]), {}).setdefault(layer, {})[name] = value
    budgets: dict[int, dict[str, LayerScales]] = {}
    attention: dict[int, dict[str, AttentionRanges]] = {}
    for b, layers in sorted(fields.items()):
        for name, f in sorted(layers.items()):
            if name.endswith(SDPA):
                attention.setdefault(b, {})[name.removesuffix(SDPA)] = AttentionRanges(**f)
            else:
                budgets.setdefault(b, {})[name] = LayerScales(**f)
    return budgets, attention


# --- the folder ----------------------------------------------------------------------------------


def check_out_dir(out: Path) -> None:
    """OutputError unless `out` is absent, an empty folder or an earlier calibration folder."""
    if not out.exists():
        if not out.parent.is_dir():
            raise OutputError(f"-o {out}: its parent folder {out.parent} does not exist; create it")
        return
    if not out.is_dir():
        raise OutputError(f"-o {out} is a file; give a folder for the calibration")
    entries = {p.name for p in out.iterdir()}
    if entries and not (SUMMARY_FILE in entries and entries <= {SUMMARY_FILE, SCALES_FILE}):
        raise OutputError(
            f"-o {out} is not empty and holds no earlier calibration ({len(entries)} entries); "
            "choose a new or empty folder"
        )


def save_calibration(out: Path, calibration: Calibration, summary: dict) -> Path:
    """Write DIR/scales.safetensors and DIR/calibration.json (summary plus format, precision,
    config hash and the scales file's sha256) atomically; returns `out`."""
    from safetensors.torch import save_file

    check_out_dir(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = out.with_name(f".{out.name}.old")
    umask = os.umask(0)  # read it (the only way) and put it back at once
    os.umask(umask)
    try:
        scales_path = tmp / SCALES_FILE
        meta = {"format": FORMAT, "precision": calibration.precision}
        save_file(to_tensors(calibration), scales_path, metadata=meta)
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "precision": calibration.precision,
            "config_hash": calibration.config_hash,
            **summary,
            "scales_file": SCALES_FILE,
            "scales_sha256": sha256_file(scales_path),
        }
        (tmp / SUMMARY_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        # mkdtemp makes a 0700 folder (and safetensors a 0600 file): give them the modes a plain
        # mkdir and open would, so that other users of a shared artifacts folder can read them.
        os.chmod(tmp, 0o777 & ~umask)
        os.chmod(scales_path, 0o666 & ~umask)
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise OutputError(f"could not write the calibration to {out}: {err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left over when something failed
    return out


def read_summary(directory: Path) -> dict:
    """calibration.json of a calibration folder; ArtifactError if absent or of another format."""
    doc = read_json(
        directory / SUMMARY_FILE,
        ArtifactError,
        missing=f"{directory} is not a calibration folder: {SUMMARY_FILE} is missing; "
        "write one with `python -m calibration.calibrate`",
        fix="calibrate again",
    )
    if not isinstance(doc, dict) or (doc.get("format"), doc.get("format_version")) != (
        FORMAT,
        FORMAT_VERSION,
    ):
        found = (doc.get("format"), doc.get("format_version")) if isinstance(doc, dict) else doc
        raise ArtifactError(
            f"{directory / SUMMARY_FILE} has format {found!r}; expected {FORMAT!r} version "
            f"{FORMAT_VERSION}; calibrate again"
        )
    return doc


def load_calibration(directory: str | Path) -> Calibration:
    """Read a calibration folder, checking the scales file against the sha256 in its summary."""
    from safetensors.torch import load_file

    directory = Path(directory)
    doc = read_summary(directory)
    path = directory / SCALES_FILE
    if not path.is_file() or sha256_file(path) != doc.get("scales_sha256"):
        raise ArtifactError(
            f"{path} is missing or does not match the sha256 in {SUMMARY_FILE}; calibrate again"
        )
    if doc.get("precision") not in QUANTIZATIONS:
        raise ArtifactError(
            f"{directory / SUMMARY_FILE} has precision {doc.get('precision')!r}, not one of "
            f"{QUANTIZATIONS}; calibrate again"
        )
    flat = load_file(path)
    budgets, attention = from_tensors(flat)
    return Calibration(doc["precision"], doc["config_hash"], budgets, attention)


def amax_range(t: Tensor | None) -> list[float] | float | None:
    """A JSON-friendly view of a scale tensor: the value for a scalar, [min, max] otherwise."""
    if t is None:
        return None
    if t.dim() == 0:
        return round(float(t), 6)
    return [round(float(t.min()), 6), round(float(t.max()), 6)]


def describe_layers(layers: dict[str, LayerScales | AttentionRanges]) -> dict[str, dict]:
    """Per-layer (or per-attention) ranges for calibration.json."""
    return {
        name: {
            f: amax_range(getattr(s, f))
            for f in (SDPA_FIELDS if isinstance(s, AttentionRanges) else FIELDS)
            if getattr(s, f) is not None
        }
        for name, s in layers.items()
    }
