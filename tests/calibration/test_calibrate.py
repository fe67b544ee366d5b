"""`python -m calibration.calibrate`: the folder it writes, per-budget scales, and its refusals.

Run: python -m pytest tests/calibration/test_calibrate.py
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from calibration.calibrate import main
from export.quant_scales import (
    SCALES_FILE,
    SUMMARY_FILE,
    check_out_dir,
    load_calibration,
    sha256_file,
)
from presto_common.errors import ArtifactError, OutputError
from presto_ref.presets import PRESETS


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_calibration_writes_scales_and_a_summary_with_their_hash(calibrations, precision):
    out = calibrations[precision]
    assert sorted(p.name for p in out.iterdir()) == sorted([SCALES_FILE, SUMMARY_FILE])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    assert stat.S_IMODE((out / SCALES_FILE).stat().st_mode) == 0o666 & ~umask
    doc = json.loads((out / SUMMARY_FILE).read_text())
    assert doc["scales_sha256"] == sha256_file(out / SCALES_FILE)
    assert doc["precision"] == precision
    assert doc["config_hash"] == PRESETS["tiny"].config_hash()
    assert doc["tools"]["modelopt"] and doc["tools"]["torch"] == torch.__version__
    # The tiny schedule runs budgets 2, 1, 0, 0 at its four sigmas: every budget is calibrated.
    assert doc["schedule_budgets"] == [2, 1, 0, 0]
    assert sorted(int(b) for b in doc["budgets"]) == [0, 1, 2]
    calibration = load_calibration(out)
    assert calibration.precision == precision
    q = calibration.layers(0)["blocks.0.attn.q"]
    if precision == "int8":  # per-channel weights, SmoothQuant factors and channel ranges (K = 64)
        assert q.weight_amax.shape == (64,) and q.smooth.shape == (64,)
        assert q.input_channel_amax.shape == (64,)
    else:  # per tensor, no smoothing
        assert q.weight_amax.shape == () and q.smooth is None
    # A budget drops blocks: budget 2 runs blocks 0 and 3 of 4, so blocks 1 and 2 have no scales.
    assert not any(name.startswith(("blocks.1.", "blocks.2.")) for name in calibration.layers(2))


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_scales_differ_per_budget(calibrations, precision):
    """Each budget sees its own sigmas, so the DiT's input ranges differ (c_in x and the noise
    embedding change with sigma)."""
    doc = json.loads((calibrations[precision] / SUMMARY_FILE).read_text())
    sigmas = [set(doc["budgets"][b]["sigmas"]) for b in ("0", "1", "2")]
    assert not (sigmas[0] & sigmas[1] or sigmas[1] & sigmas[2] or sigmas[0] & sigmas[2])
    calibration = load_calibration(calibrations[precision])
    for layer in ("proj_in", "blocks.0.attn.q", "blocks.3.ffn.w2"):
        amaxes = [float(calibration.layers(b)[layer].input_amax) for b in (0, 1, 2)]
        assert len(set(amaxes)) == 3, f"{layer}: input amax per budget {amaxes}"


def test_a_tampered_scales_file_is_refused(calibrations, tmp_path):
    copy = tmp_path / "calib"
    shutil.copytree(calibrations["int8"], copy)
    with (copy / SCALES_FILE).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        load_calibration(copy)


def test_an_earlier_calibration_may_be_replaced(calibrations, tmp_path):
    copy = tmp_path / "calib"
    shutil.copytree(calibrations["fp8"], copy)
    check_out_dir(copy)  # no error: the folder holds only an earlier calibration
    (copy / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty and holds no earlier calibration"):
        check_out_dir(copy)


# --- refusals, before any model is loaded ---------------------------------------------------------


def test_an_unknown_precision_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "tiny", "--precision", "fp4", "-o", str(tmp_path / "c")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fp4'" in capsys.readouterr().err


def test_a_non_empty_foreign_out_dir_is_refused(tmp_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"1")
    assert main(["--preset", "tiny", "--precision", "int8", "-o", str(tmp_path), "-q"]) == 1
    err = capsys.readouterr().err
    assert "is not empty and holds no earlier calibration" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]  # left untouched


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "0"], "--seeds 0 is outside [1, 256]"),
        (["--seeds", "1000000000"], "--seeds 1000000000 is outside [1, 256]"),
        (["--duration-s", "-1"], "--duration-s -1.0 must be a positive number"),
        (["--prompts", "/nonexistent/prompts.txt"], "--prompts /nonexistent/prompts.txt cannot"),
        (["--device", "tpu"], "--device 'tpu' is not a device name"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    out = tmp_path / "c"
    argv = ["--preset", "tiny", "--precision", "int8", "-o", str(out), "-q", *flags]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and list(Path(tmp_path).iterdir()) == []


def test_a_failed_write_leaves_the_earlier_calibration_and_no_temporary_folder(
    calibrations, tmp_path, monkeypatch
):
    import export.quant_scales as scales

    earlier = tmp_path / "calib"
    shutil.copytree(calibrations["int8"], earlier)
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    replacement = load_calibration(calibrations["fp8"])

    def disk_full(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scales, "sha256_file", disk_full)
    with pytest.raises(OutputError, match="could not write the calibration"):
        scales.save_calibration(earlier, replacement, {})
    assert [p.name for p in tmp_path.iterdir()] == ["calib"]
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before


def test_a_checkpoint_is_calibrated_like_its_preset(modelopt, tmp_path, capsys):
    from presto_ref.checkpoint import random_model, save_checkpoint

    checkpoint = save_checkpoint(random_model("tiny", seed=3), tmp_path / "ckpt")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment line is skipped\nwarm cello drone\n")
    out = tmp_path / "calib"
    argv = ["--checkpoint", str(checkpoint), "--precision", "fp8", "--duration-s", "0.5"]
    argv += ["--prompts", str(prompts), "--seeds", "1", "-o", str(out), "-q"]
    assert main(argv) == 0
    doc = json.loads((out / SUMMARY_FILE).read_text())
    assert doc["checkpoint"] == str(checkpoint) and "preset" not in doc
    assert doc["prompts"] == ["warm cello drone"] and doc["seeds"] == [0]
    assert doc["config_hash"] == PRESETS["tiny"].config_hash()
    assert json.loads(capsys.readouterr().out)["scales_sha256"] == doc["scales_sha256"]
