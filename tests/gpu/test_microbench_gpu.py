"""benchmarks.microbench runs every part on CUDA.

    python -m pytest -q -rs -m gpu tests/gpu/test_microbench_gpu.py

A smoke test at the small preset's shapes with two timed runs: it checks that each part runs and
reports numbers, not what they are (figures are measured by the module itself, never asserted in a
timed test).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def test_every_part_runs_and_reports(tmp_path: Path) -> None:
    from benchmarks.microbench import PARTS, main

    path = tmp_path / "microbench.json"
    argv = ["--preset", "small", "--runs", "2", "--warmup", "1", "--json", str(path), "-q"]
    assert main(argv) == 0
    report = json.loads(path.read_text())
    assert report["complete"]
    for part in PARTS:
        assert part in report, report.get(f"{part}_error", f"{part} missing")
    gemms = {name: row for name, row in report["gemm"].items() if isinstance(row, dict)}
    assert gemms and all(row["tflops"] > 0 for row in gemms.values()), report["gemm"]
    timed = [row for name, row in report["attention"].items() if "median_ms" in row]
    assert timed, "every SDPA backend refused the attention shape"
    errors = report["dit-error"]["rel_l2_vs_fp32"]
    # bf16 against fp32: near 1e-2 (8 mantissa bits through the blocks); 0 would mean the bf16
    # model ran in fp32, and 0.1 or more a broken cast.
    assert all(0 < e < 0.1 and math.isfinite(e) for e in errors.values()), errors
    assert report["dit-profile"]["profile"]["launches"] > 0
    assert len(report["convs"]) == 4
