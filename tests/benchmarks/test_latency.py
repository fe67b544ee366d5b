"""benchmarks.latency on the CPU with a tiny ONNX build: JSON shape, RTF and the --compare gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import latency

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.build import main as build_main

    out = tmp_path_factory.mktemp("latency") / "tiny"
    assert (
        build_main(
            [
                "--preset",
                "tiny",
                "--backends",
                "onnx",
                "--durations-s",
                "1",
                "--no-verify",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def result(build: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    path = tmp_path_factory.mktemp("latency_json") / "run.json"
    args = ["--engines", str(build), "--device", "cpu", "--runs", "5", "--warmup", "1"]
    assert latency.main([*args, "--json", str(path)]) == 0
    return json.loads(path.read_text()), path


def test_json_shape_and_rtf(result: tuple[dict, Path], capsys: pytest.CaptureFixture) -> None:
    data, _ = result
    assert set(data["stages"]) == set(latency.STAGES)
    assert data["frames"] == 46 and data["batch"] == 1
    assert data["environment"]["torch"] and data["config_hash"]
    assert data["roofline"]["matmul_gflops"] > 0 and data["roofline"]["copy_gbps"] > 0
    for name, row in data["stages"].items():
        assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"], name
        assert row["rtf"] == pytest.approx(data["duration_s"] / (row["median_ms"] / 1e3)), name
        assert row["flops"] > 0 and row["floor_ms"] > 0, name
    stages = data["stages"]
    assert stages["e2e_stereo"]["flops"] == stages["e2e_mono"]["flops"] + stages["stereo"]["flops"]


def test_last_stdout_line_is_the_json(build: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--engines", str(build), "--device", "cpu", "--runs", "2", "--warmup", "0"]
    assert latency.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "median" in "\n".join(lines[:-1])  # the table comes first
    assert set(json.loads(lines[-1])["stages"]) == set(latency.STAGES)


def test_compare_gate(
    result: tuple[dict, Path], build: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data, path = result
    argv = ["--engines", str(build), "--device", "cpu", "--runs", "5", "--warmup", "1"]
    # Identical medians never regress.
    assert latency.compare(data, data, 3.0) == []
    # A baseline 3x faster with no spread: every stage is now 200% slower.
    faster = json.loads(path.read_text())
    for row in faster["stages"].values():
        row["median_ms"] /= 3
        row["cv"] = 0.0
    doctored = tmp_path / "faster.json"
    doctored.write_text(json.dumps(faster))
    capsys.readouterr()
    assert latency.main([*argv, "--compare", str(doctored), "--threshold-sigmas", "1"]) == 1
    err = capsys.readouterr().err
    for name in ("dit_steps", "vae_decoder", "e2e_stereo"):
        assert f"REGRESSION {name}:" in err


def test_compare_against_itself_exits_0(build: Path, tmp_path: Path) -> None:
    # The same run as its own baseline: identical medians never regress.
    path = tmp_path / "self.json"
    argv = ["--engines", str(build), "--device", "cpu", "--runs", "3", "--warmup", "1"]
    assert latency.main([*argv, "--json", str(path)]) == 0
    baseline = json.loads(path.read_text())
    assert latency.compare(baseline, baseline, 3.0) == []
    # and a fresh run against that file passes the gate with a generous K (CPU noise is large)
    assert latency.main([*argv, "--compare", str(path), "--threshold-sigmas", "50"]) == 0


def test_regression_rule() -> None:
    def run(median: float, cv: float) -> dict:
        return {"stages": {"vae_decoder": {"median_ms": median, "cv": cv}}}

    assert latency.compare(run(104.0, 0.0), run(100.0, 0.0), 3.0) == []  # under 5%
    assert latency.compare(run(106.0, 0.0), run(100.0, 0.0), 3.0) != []  # over 5%
    # cv 0.03 and 0.04 combine to 0.05; K = 3 allows 15%
    assert latency.compare(run(114.0, 0.03), run(100.0, 0.04), 3.0) == []
    assert latency.compare(run(116.0, 0.03), run(100.0, 0.04), 3.0) != []
