"""`python -m calibration.report` on tiny ONNX builds (CPU).

Run: python -m pytest tests/calibration/test_report.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from calibration.report import REFERENCE, main
from export.build import main as build_main

DURATION_S = 1.0  # 46 frames, the tiny builds' one bucket
PROMPT = "melancholic solo cello with room reverb"  # one held-out prompt keeps each run near 1 s


@pytest.fixture(scope="session")
def fp32_build(tmp_path_factory) -> Path:
    """The tiny preset in fp32, ONNX, batch 1, 1 s."""
    out = tmp_path_factory.mktemp("report") / "fp32"
    argv = ["--preset", "tiny", "--backends", "onnx", "--batch-sizes", "1"]
    argv += ["--durations-s", str(DURATION_S), "--no-verify", "--out", str(out), "-q"]
    assert build_main(argv) == 0
    return out


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report-prompts") / "prompts.txt"
    path.write_text(PROMPT + "\n")
    return path


def report(engines: Path, against: list[Path], prompts: Path, tmp: Path, *extra: str) -> dict:
    """Run the CLI; return its JSON file (checked equal to stdout's last line by one test)."""
    argv = ["--engines", str(engines), "--prompts", str(prompts), "--seeds", "2", "-q"]
    for folder in against:
        argv += ["--against", str(folder)]
    argv += ["--json", str(tmp / "report.json"), *extra]
    assert main(argv) == 0, argv
    return json.loads((tmp / "report.json").read_text())


def copy_with(build: Path, tmp: Path, name: str, edit) -> Path:
    """A copy of a build folder whose manifest `edit(data)` changed in place."""
    copy = tmp / name
    shutil.copytree(build, copy)
    data = json.loads((copy / "manifest.json").read_text())
    edit(data)
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


# --- the machinery, on an unquantized build graded against itself

# fp32 ONNX graphs on ORT agree with eager fp32 PyTorch to ~1e-6 relative L2 per call (measured
# 2e-8..1.6e-6 at the four steps; tests/export), so 1e-4 leaves room for thread-count rounding while
# a wrong budget, sigma or input order (which change x0 completely) cannot pass. Cosine is then
# 1 - O(rel_l2**2).
MAX_FP32_REL_L2 = 1e-4
# End to end the chain compounds that to ~4e-6 (measured 107.7-108.3 dB); 80 dB is rel L2 1e-4.
MIN_FP32_SNR_DB = 80.0


def test_fp32_build_against_itself(fp32_build, prompts_file, tmp_path, capsys):
    doc = report(fp32_build, [fp32_build], prompts_file, tmp_path)
    stdout = capsys.readouterr().out
    assert json.loads(stdout.strip().splitlines()[-1]) == doc, "stdout's last line is the JSON"
    assert "SNR dB, same noise" in stdout and "x0 of" in stdout, stdout
    engines, against = doc["builds"]  # the same folder twice gets two labels
    assert engines == "fp32" and against != engines
    for b in doc["builds"].values():
        assert b["precision"] == ["fp32"] and b["quantization"] == [None], b
    assert doc["backend"] == "onnx" and doc["frames"] == 46 and doc["seeds"] == [0, 1]
    assert doc["environment"]["git_commit"], doc["environment"]
    # One row per step of the tiny 4-step ping-pong schedule, at its budgets.
    assert [s["budget"] for s in doc["dit_steps"]] == [2, 1, 0, 0]
    for step in doc["dit_steps"]:
        for name in (f"{engines} vs {REFERENCE}", f"{against} vs {REFERENCE}"):
            s = step["x0"][name]
            assert s["worst_rel_l2"] < MAX_FP32_REL_L2 and s["worst_cosine"] > 1 - 1e-8, (name, s)
        # The same engine files on the same inputs: equal up to ORT's threading, in practice 0.
        assert step["x0"][f"{engines} vs {against}"]["worst_rel_l2"] < 1e-6, step
    for name in (f"{engines} vs {REFERENCE}", f"{against} vs {REFERENCE}"):
        for signal, s in doc["sampling"][name].items():
            assert s["worst_snr_db"] > MIN_FP32_SNR_DB, (name, signal, s)
    for s in doc["sampling"][f"{engines} vs {against}"].values():
        assert s["snr_db"] is None or s["snr_db"] > 120, s


# --- error paths: one line, exit 1


def no_dits(data: dict) -> None:
    data["artifacts"] = [a for a in data["artifacts"] if a["component"] != "dit"]


def other_model(data: dict) -> None:
    data["config_hash"] = "0" * 64


def no_source(data: dict) -> None:
    data["build_env"].pop("source")


def bf16(data: dict) -> None:  # the manifest of a bf16 build; no engine gets loaded
    for a in data["artifacts"]:
        a["precision"] = "bf16"


@pytest.mark.parametrize(
    "edit, role, message",
    [
        (no_dits, "engines", "has no DiT artifacts for backend onnx"),
        (bf16, "against", "ONNX Runtime's CPU provider cannot run"),
        (other_model, "against", "was built from model config 000000000000"),
        (no_source, "engines", "does not record a preset or checkpoint"),
    ],
)
def test_bad_builds_are_refused(fp32_build, prompts_file, tmp_path, capsys, edit, role, message):
    bad = copy_with(fp32_build, tmp_path, "bad", edit)
    engines, against = (bad, fp32_build) if role == "engines" else (fp32_build, bad)
    argv = ["--engines", str(engines), "--against", str(against), "--prompts", str(prompts_file)]
    assert main([*argv, "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_missing_bucket_names_the_fix(fp32_build, prompts_file, tmp_path, capsys):
    argv = ["--engines", str(fp32_build), "--prompts", str(prompts_file), "-q"]
    assert main([*argv, "--duration-s", "2"]) == 1
    err = capsys.readouterr().err
    assert "no bucket" in err and "python -m export.build" in err, err

    # An --against build without the --engines' bucket: refused before the sampler runs.
    def half_second(data: dict) -> None:  # the manifest of a 0.5 s build; no engine gets loaded
        for a in data["artifacts"]:
            a["frames"] = a["frames"] and 23

    shorter = copy_with(fp32_build, tmp_path, "shorter", half_second)
    assert main([*argv, "--against", str(shorter)]) == 1
    err = capsys.readouterr().err
    assert "no bucket" in err and "--durations-s" in err, err


@pytest.mark.parametrize(
    "flags, message",
    [(["--seeds", "0"], "--seeds 0"), (["--duration-s", "-1"], "--duration-s -1")],
)
def test_bad_flags(fp32_build, capsys, flags, message):
    assert main(["--engines", str(fp32_build), *flags, "-q"]) == 1
    assert message in capsys.readouterr().err


# --- a quantized build: the INT8 DiT (calibrated by the `calibrations` fixture) against fp32


@pytest.fixture(scope="session")
def int8_build(fp32_build, calibrations, tmp_path_factory) -> Path:
    """The tiny preset with INT8 DiT GEMMs, its other components reused from `fp32_build`."""
    out = tmp_path_factory.mktemp("report") / "int8"
    argv = ["--preset", "tiny", "--backends", "onnx", "--batch-sizes", "1"]
    argv += ["--quantization", "int8", "--calibration", str(calibrations["int8"])]
    argv += ["--durations-s", str(DURATION_S), "--no-verify", "--reuse-from", str(fp32_build)]
    assert build_main([*argv, "--out", str(out), "-q"]) == 0
    return out


# Measured on this fixture (3 calibration prompts x 1 seed; 1 held-out prompt x 2 seeds): x0 cosine
# against the fp32 reference 0.99976-0.99998 (rel L2 0.7-2.2%) at the steps with sigma >= 0.47, and
# rel L2 4.7e-5 at sigma 0.002, where D(x) ~ x (c_skip ~ 1) leaves the network little to say; the
# latents at 33.5-36.0 dB SNR and the audio at 22.9-25.3 dB (the random VAE decoder costs ~10 dB). The
# bounds leave about 2x (6 dB) of room for ORT's threading and ModelOpt's version, and stay far from
# what a broken quantization gives (cosine ~0 for wrong scales, 108 dB for a graph left in fp32).
MIN_INT8_COSINE = 0.999  # rel L2 ~4.5%, twice the worst measured
MIN_INT8_REL_L2 = 1e-3  # where sigma > 0.1: 8-bit round-off (1/255 of a range) cannot vanish
MIN_INT8_SNR_DB = {"latents": 27.5, "audio": 17.0}
MAX_INT8_SNR_DB = 60.0  # an fp32 graph would reach ~108 dB


def test_int8_build_against_fp32(int8_build, fp32_build, prompts_file, tmp_path):
    doc = report(int8_build, [fp32_build], prompts_file, tmp_path)
    int8 = doc["builds"]["int8"]
    assert int8["quantization"] == ["int8"] and len(int8["calibration_sha256"][0]) == 64, int8
    for step in doc["dit_steps"]:
        s = step["x0"][f"int8 vs {REFERENCE}"]
        assert s["worst_cosine"] > MIN_INT8_COSINE, step
        if step["sigma"] > 0.1:
            assert s["rel_l2"] > MIN_INT8_REL_L2, step
        # The fp32 build is the reference to ~1e-6, so grading against either says the same.
        assert abs(step["x0"]["int8 vs fp32"]["rel_l2"] - s["rel_l2"]) < 1e-4, step
    for signal, s in doc["sampling"][f"int8 vs {REFERENCE}"].items():
        assert MIN_INT8_SNR_DB[signal] < s["worst_snr_db"] <= s["snr_db"] < MAX_INT8_SNR_DB, (
            signal,
            s,
        )
