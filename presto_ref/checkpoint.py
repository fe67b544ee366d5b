"""Checkpoint directories: `config.json` plus one safetensors file per component.

    checkpoint/
      config.json               {"format": "presto-checkpoint", "format_version": 1, "config": {...}}
      text_encoder.safetensors
      dit.safetensors
      vae.safetensors
      stereo.safetensors

This is the one module of `presto_ref` that touches the disk. Saving writes into a temporary sibling
folder and renames it into place, so a failed save leaves nothing half-written. Loading checks every
tensor's name and shape against the config and reports all mismatches in one error.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from presto_common.errors import CheckpointError, ConfigError
from presto_common.files import read_json
from presto_ref.config import PrestoConfig
from presto_ref.pipeline import CHECKPOINT_PARTS, Presto
from presto_ref.presets import get_preset

FORMAT = "presto-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"


def random_model(preset_or_config: str | PrestoConfig, seed: int = 0) -> Presto:
    """A preset's (or a config's) model with seeded random weights that exercise every parameter."""
    config = get_preset(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    return Presto(config).init_random(seed)


def save_checkpoint(model: Presto, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `model` as a checkpoint directory; returns its path."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{directory} already exists and is not empty; choose a new folder or pass overwrite=True"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": model.config.to_dict(),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        for name in CHECKPOINT_PARTS:
            state = {
                k: v.detach().cpu().contiguous()
                for k, v in getattr(model, name).state_dict().items()
            }
            save_file(state, tmp / f"{name}.safetensors", metadata={"component": name})
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except OSError as err:
        raise CheckpointError(
            f"could not write the checkpoint to {directory}: {err}; free disk space or choose another "
            f"folder (nothing was left behind)"
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left over when something failed
    return directory


def read_config(directory: str | Path) -> PrestoConfig:
    """The config stored in a checkpoint directory."""
    path = Path(directory) / CONFIG_FILE
    meta = read_json(
        path,
        CheckpointError,
        missing=f"{directory} is not a checkpoint: {CONFIG_FILE} is missing; point --checkpoint at "
        f"a folder written by presto_ref.checkpoint.save_checkpoint",
        fix="the checkpoint is corrupt; save it again",
    )
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds {type(meta).__name__}, not an object; save it again")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format {meta.get('format')!r} version {meta.get('format_version')!r}; "
            f"expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    try:
        return PrestoConfig.from_dict(meta["config"])
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} holds an invalid config: {err}") from None


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Presto:
    """Build the model from config.json and load every component's weights, strictly."""
    directory = Path(directory)
    config = read_config(directory)
    model = Presto(config)
    problems: list[str] = []
    states = {}
    for name in CHECKPOINT_PARTS:
        path = directory / f"{name}.safetensors"
        if not path.is_file():
            problems.append(f"{path.name} is missing")
            continue
        try:
            states[name] = load_file(path)
        except (SafetensorError, OSError) as err:
            problems.append(f"{path.name} cannot be read ({err})")
            continue
        expected = getattr(model, name).state_dict()
        got = states[name]
        problems += [f"{name}: missing tensor {k}" for k in sorted(set(expected) - set(got))]
        problems += [f"{name}: unexpected tensor {k}" for k in sorted(set(got) - set(expected))]
        problems += [
            f"{name}: {k} has shape {tuple(got[k].shape)}, the config needs {tuple(v.shape)}"
            for k, v in expected.items()
            if k in got and got[k].shape != v.shape
        ]
    if problems:
        listed = "; ".join(problems[:20]) + (
            f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise CheckpointError(
            f"checkpoint {directory} does not match its config.json ({len(problems)} problems): {listed}"
        )
    for name, state in states.items():
        getattr(model, name).load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()
