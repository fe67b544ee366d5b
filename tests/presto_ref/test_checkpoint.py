"""Checkpoint directories: `python -m pytest tests/presto_ref/test_checkpoint.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from presto_common.errors import CheckpointError
from presto_ref.checkpoint import load_checkpoint, random_model, read_config, save_checkpoint
from presto_ref.pipeline import CHECKPOINT_PARTS


def test_round_trip_is_bit_exact(tiny_model, tmp_path: Path) -> None:
    path = save_checkpoint(tiny_model, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["config.json"] + [f"{c}.safetensors" for c in CHECKPOINT_PARTS]
    )
    loaded = load_checkpoint(path)
    assert loaded.config == tiny_model.config
    for name in CHECKPOINT_PARTS:
        a, b = getattr(tiny_model, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key} changed"


def test_random_init_is_seeded_and_complete() -> None:
    a, b, c = random_model("tiny", 3), random_model("tiny", 3), random_model("tiny", 4)
    for name in CHECKPOINT_PARTS:
        sa, sb, sc = (getattr(m, name).state_dict() for m in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert any(not torch.equal(sa[k], sc[k]) for k in sa)
        zero = [k for k, v in sa.items() if v.abs().max() == 0]
        assert not zero, f"{name} has all-zero tensors {zero}"


def test_loading_reports_every_mismatch_at_once(tiny_model, tmp_path: Path) -> None:
    path = save_checkpoint(tiny_model, tmp_path / "ckpt")
    dit = load_file(path / "dit.safetensors")
    dit.pop("proj_out.bias")
    dit["proj_in.weight"] = torch.zeros(3, 3)
    dit["extra.weight"] = torch.zeros(1)
    save_file(dit, path / "dit.safetensors")
    (path / "stereo.safetensors").unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "4 problems" in message
    assert "stereo.safetensors is missing" in message
    assert "dit: missing tensor proj_out.bias" in message
    assert "dit: unexpected tensor extra.weight" in message
    assert "dit: proj_in.weight has shape (3, 3), the config needs (64, 32)" in message


def test_a_corrupt_file_is_reported(tiny_model, tmp_path: Path) -> None:
    path = save_checkpoint(tiny_model, tmp_path / "ckpt")
    (path / "vae.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="vae.safetensors cannot be read"):
        load_checkpoint(path)


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"format": "presto-checkpoint", "format_version": 9})
    )
    with pytest.raises(CheckpointError, match="version 9"):
        read_config(tmp_path)


def test_save_refuses_to_overwrite_and_leaves_no_temporaries(tiny_model, tmp_path: Path) -> None:
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(tiny_model, tmp_path / "ckpt")
    save_checkpoint(tiny_model, tmp_path / "ckpt", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_failed_save_leaves_nothing(tiny_model, tmp_path: Path, monkeypatch) -> None:
    import presto_ref.checkpoint as ckpt

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(CheckpointError, match="could not write the checkpoint.*disk full"):
        save_checkpoint(tiny_model, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []
