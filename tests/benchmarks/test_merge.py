"""benchmarks.merge: two latency runs of one build (timed at once on two GPUs) as one baseline."""

from __future__ import annotations

import copy
import json

import pytest

from benchmarks.compare import compare
from benchmarks.merge import main, merge
from presto_common.errors import ArtifactError


def run(backends: list[str], batches=(1,), gbps: float = 4000.0) -> dict:
    """A finished benchmarks.latency document with one row per backend and batch."""
    stage = {"median_ms": 10.0, "cv": 0.01}
    return {
        "model": "tiny",
        "complete": True,
        "device": "cuda",
        "duration_s": 2.0,
        "frames": 64,
        "step_budgets": [2, 0],
        "config_hash": "abc",
        "runs": 20,
        "warmup": 3,
        "max_batch_runs": 5,
        "max_batch_warmup": 1,
        "backends": backends,
        "roofline": {"matmul_gflops": 8e5, "copy_gbps": gbps},
        "max_batch": {b: {"batch": max(batches)} for b in backends},
        "environment": {"git_commit": "dec0952", "git_dirty": False, "gpu": "NVIDIA H200"},
        "results": [
            {"backend": b, "batch": n, "stages": {"dit_steps": dict(stage)}}
            for b in backends
            for n in batches
        ],
    }


def test_merge_keeps_every_row_and_each_run_s_roofline():
    a, b = run(["torch", "eager-bf16"], (1, 96)), run(["eager-fp32"], (1, 32), gbps=4100.0)
    merged = merge({"a.json": a, "b.json": b})
    assert [(r["backend"], r["batch"]) for r in merged["results"]] == [
        ("torch", 1), ("torch", 96), ("eager-bf16", 1), ("eager-bf16", 96),
        ("eager-fp32", 1), ("eager-fp32", 32),
    ]  # fmt: skip
    assert merged["backends"] == ["torch", "eager-bf16", "eager-fp32"]
    assert set(merged["max_batch"]) == {"torch", "eager-bf16", "eager-fp32"}
    assert merged["roofline"] == a["roofline"]
    assert [m["roofline"]["copy_gbps"] for m in merged["merged_from"]] == [4000.0, 4100.0]
    assert merged["complete"] is True and merged["environment"] == a["environment"]
    # --compare reads it like one run: the merged file against itself has no regression
    verdict = compare(merged, copy.deepcopy(merged), 3.0)
    assert verdict.ok and len(verdict.compared) == 6


@pytest.mark.parametrize(
    "field, value",
    [("runs", 5), ("config_hash", "other"), ("environment.git_commit", "7683c7a")],
)
def test_runs_that_differ_are_refused_by_name(field, value):
    a, b = run(["torch"]), run(["eager-fp32"])
    if field.startswith("environment."):
        b["environment"][field.split(".")[1]] = value
    else:
        b[field] = value
    with pytest.raises(ArtifactError, match=rf"differ in {field}.*a\.json.*b\.json"):
        merge({"a.json": a, "b.json": b})


def test_a_row_timed_twice_is_refused():
    with pytest.raises(ArtifactError, match="torch at batch 1 was timed in both a.json and b.json"):
        merge({"a.json": run(["torch"]), "b.json": run(["torch", "eager-fp32"])})


def test_cli_writes_the_merge_and_refuses_a_run_cut_short(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(run(["torch"])))
    b.write_text(json.dumps(run(["eager-fp32"])))
    out = tmp_path / "merged.json"
    assert main([str(a), str(b), "-o", str(out)]) == 0
    assert len(json.loads(out.read_text())["results"]) == 2
    assert "merged 2 runs" in capsys.readouterr().out

    b.write_text(json.dumps(run(["eager-fp32"]) | {"complete": False}))
    out2 = tmp_path / "never.json"
    assert main([str(a), str(b), "-o", str(out2)]) == 2
    assert "cut short" in capsys.readouterr().err and not out2.exists()
    assert main([str(a), "-o", str(out2)]) == 2
    assert "two runs or more" in capsys.readouterr().err
