"""benchmarks.compare: the regression rule, row matching, the vacuous cases and the committed baseline.

python -m pytest tests/benchmarks/test_compare.py -q
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from benchmarks.compare import compare, load_baseline
from presto_common.errors import ArtifactError

COMMITTED = Path(__file__).parents[2] / "benchmarks" / "baselines" / "h100-presto-ls-bf16.json"
SETTING = {"model": "presto-ls", "duration_s": 32.0, "device": "cuda"}


def run(*rows: tuple[str, int, float, float], **setting) -> dict:
    """A run of (backend, batch, vae_decoder median ms, cv) rows."""
    return {
        **SETTING,
        **setting,
        "results": [
            {"backend": b, "batch": n, "stages": {"vae_decoder": {"median_ms": ms, "cv": cv}}}
            for b, n, ms, cv in rows
        ],
    }


def test_regression_rule() -> None:
    base = run(("torch", 1, 100.0, 0.0))
    assert compare(run(("torch", 1, 104.0, 0.0)), base, 3.0).ok
    verdict = compare(run(("torch", 1, 106.0, 0.0)), base, 3.0)
    assert not verdict.ok and len(verdict.regressions) == 1
    # cv 0.03 and 0.04 combine to 0.05; K = 3 allows 15%
    assert compare(run(("torch", 1, 114.0, 0.03)), run(("torch", 1, 100.0, 0.04)), 3.0).ok
    (line,) = compare(
        run(("torch", 1, 116.0, 0.03)), run(("torch", 1, 100.0, 0.04)), 3.0
    ).regressions
    assert line.startswith("torch batch 1 vae_decoder: median 116.00 ms vs baseline 100.00 ms")
    assert line.endswith("(+16.0%, allowed +15.0%)")


def test_rows_match_by_backend_and_batch() -> None:
    both = run(("eager-bf16", 1, 100.0, 0.0), ("torch", 1, 200.0, 0.0))
    base = run(("eager-bf16", 1, 100.0, 0.0), ("torch", 1, 100.0, 0.0), ("torch", 8, 50.0, 0.0))
    verdict = compare(both, base, 3.0)
    assert verdict.compared == ["eager-bf16 batch 1 vae_decoder", "torch batch 1 vae_decoder"]
    (line,) = verdict.regressions  # the baseline's batch-8 row is not the run's: ignored
    assert line.startswith("torch batch 1 vae_decoder:")
    assert verdict.summary() == (
        "compared 2 stages of presto-ls, 32.00 s, cuda (eager-bf16 batch 1, torch batch 1): "
        "1 regressed"
    )


def test_no_matching_row_fails() -> None:
    """Another backend, batch, model, duration or device: nothing is compared, and that fails."""
    base = run(("torch", 1, 100.0, 0.0))
    for current in (
        run(("torch", 8, 1.0, 0.0)),
        run(("tensorrt", 1, 1.0, 0.0)),
        run(("torch", 1, 1.0, 0.0), model="presto-l"),
        run(("torch", 1, 1.0, 0.0), duration_s=10.0),
        run(("torch", 1, 1.0, 0.0), device="cpu"),
    ):
        verdict = compare(current, base, 3.0)
        assert not verdict.ok and not verdict.compared and not verdict.regressions
        assert verdict.summary().startswith("no stage of this run")
    assert compare(run(("torch", 1, 1.0, 0.0), device="cuda:0"), base, 3.0).ok  # same type
    verdict = compare(run(("torch", 1, 1.0, 0.0), device="cpu"), base, 3.0)
    assert verdict.summary() == (
        "no stage of this run (presto-ls, 32.00 s, cpu: torch batch 1) has a row in the baseline "
        "(presto-ls, 32.00 s, cuda); compare runs of the same model, duration and device"
    )


def test_a_stage_without_a_baseline_row_fails() -> None:
    base = run(("torch", 1, 100.0, 0.0))
    verdict = compare(run(("torch", 1, 100.0, 0.0), ("tensorrt", 1, 50.0, 0.0)), base, 3.0)
    assert not verdict.ok and not verdict.regressions
    assert verdict.unmatched == ["tensorrt batch 1 vae_decoder"]
    assert verdict.summary().startswith(
        "1 of 2 timed stages have no row in the baseline (presto-ls, 32.00 s, cuda): tensorrt "
        "batch 1; time only the baseline's backends and batches"
    )
    # A stage the baseline row lacks counts the same.
    more = run(("torch", 1, 100.0, 0.0))
    more["results"][0]["stages"]["stereo"] = {"median_ms": 1.0, "cv": 0.0}
    assert compare(more, base, 3.0).unmatched == ["torch batch 1 stereo"]


# --- the committed baseline -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def committed() -> dict:
    return load_baseline(COMMITTED)


def test_the_committed_baseline_loads(committed: dict) -> None:
    assert committed["complete"] is True and committed["model"] == "presto-ls"
    keys = {(r["backend"], r["batch"]) for r in committed["results"]}
    assert {("torch", 1), ("torch-nograph", 1), ("eager-bf16", 1), ("eager-fp32", 1)} <= keys


def test_a_synthetic_run_against_the_committed_baseline(committed: dict) -> None:
    """The GPU round's bench step (torch, torch-nograph, eager-bf16 at batch 1), as if measured:
    the baseline's own rows, with torch's sampling 20% slower."""
    rows = [copy.deepcopy(r) for r in committed["results"] if r["batch"] == 1]
    rows = [r for r in rows if r["backend"] != "eager-fp32"]
    torch_row = next(r for r in rows if r["backend"] == "torch")
    torch_row["stages"]["dit_steps"]["median_ms"] *= 1.2
    current = {**{k: committed[k] for k in SETTING}, "results": rows}
    verdict = compare(current, committed, 3.0)
    assert len(verdict.compared) == 3 * 6 and not verdict.unmatched
    (line,) = verdict.regressions
    assert line.startswith("torch batch 1 dit_steps: median ")
    assert "(+20.0%, allowed +" in line
    assert verdict.summary() == (
        "compared 18 stages of presto-ls, 32.00 s, cuda (torch batch 1, torch-nograph batch 1, "
        "eager-bf16 batch 1): 1 regressed"
    )
    torch_row["stages"]["dit_steps"]["median_ms"] /= 1.2
    assert compare(current, committed, 3.0).ok


def test_baselines_that_are_refused(tmp_path: Path) -> None:
    cases = {
        "missing.json": (None, "no such file"),
        "bad.json": ("{", "is not valid JSON"),
        "old.json": (json.dumps({"stages": {}}), "has no 'results' list"),
        "cut.json": (json.dumps({"complete": False, "results": []}), "cut short"),
    }
    for name, (text, message) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ArtifactError, match=message):
            load_baseline(tmp_path / name)
