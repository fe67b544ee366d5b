"""benchmarks.reference on the CPU with the tiny preset: `python -m pytest tests/benchmarks -q`."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import reference


def test_reference_profile_on_the_cpu(tmp_path: Path) -> None:
    path = tmp_path / "ref.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--duration-s", "0.25"]
    assert reference.main([*argv, "--repeats", "2", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["frames"] == 11 and report["sampler"]["num_steps"] == 4
    assert list(report["stages"]) == [
        "text_encoder",
        "dit_sampling",
        "vae_decoder",
        "mono_to_stereo",
    ]
    for row in report["stages"].values():
        assert row["runs"] == 2 and row["min_ms"] <= row["median_ms"] and row["peak_mib"] is None
    total = sum(r["median_ms"] for r in report["stages"].values())
    assert report["total_median_ms"] == total
    assert report["audio"]["finite"] is True
    assert len(report["hidden_variance"]) == len(reference.SIGMAS_FOR_VARIANCE)
