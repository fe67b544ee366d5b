"""The regression gate of benchmarks.latency: this run's stages against a baseline run's.

Rows are matched by (backend, batch) and stages by name, within runs of the same model, duration
and device type (the GPU model may differ: a baseline is a reference point, not a copy). A stage
regresses when

    median_new > median_base x (1 + max(5%, K x sqrt(cv_new^2 + cv_base^2)))

so the slowdown must exceed both 5% and K combined run-to-run spreads (coefficients of variation).
The gate fails on a regression, and also when it would pass vacuously: when no row of the run
matches the baseline, or some timed stage has no baseline row. Baseline rows the run did not time
are ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presto_common.errors import ArtifactError

MIN_REGRESSION = 0.05  # a slowdown below 5% never counts as a regression


@dataclass
class Verdict:
    """What `compare` found: the stages compared, those without a baseline row, the regressions."""

    run: str  # what the run was: model, duration, device
    baseline: str  # the same for the baseline
    compared: list[str] = field(default_factory=list)  # "backend batch B stage"
    unmatched: list[str] = field(default_factory=list)  # timed stages with no baseline row
    regressions: list[str] = field(default_factory=list)  # one line per regressed stage

    @property
    def ok(self) -> bool:
        return bool(self.compared) and not self.unmatched and not self.regressions

    def summary(self) -> str:
        """One line: what was compared, and the verdict."""
        if not self.compared:
            return (
                f"no stage of this run ({self.run}: {_rows(self.unmatched)}) has a row in the "
                f"baseline ({self.baseline}); compare runs of the same model, duration and device"
            )
        if self.unmatched:
            return (
                f"{len(self.unmatched)} of {len(self.unmatched) + len(self.compared)} timed stages "
                f"have no row in the baseline ({self.baseline}): {_rows(self.unmatched)}; time "
                f"only the baseline's backends and batches, or write a new baseline with --json"
            )
        found = f"{len(self.regressions)} regressed" if self.regressions else "no regression"
        return (
            f"compared {len(self.compared)} stages of {self.run} ({_rows(self.compared)}): {found}"
        )


def _rows(stages: list[str]) -> str:
    """'torch batch 1, eager-bf16 batch 1' from 'torch batch 1 dit_steps', ... (order kept)."""
    return ", ".join(dict.fromkeys(s.rsplit(" ", 1)[0] for s in stages))


def describe(doc: dict[str, Any]) -> str:
    """'presto-ls, 32.00 s, cuda': what rows of two runs must share to be compared."""
    device = str(doc.get("device", "?")).split(":")[0]
    return f"{doc.get('model', '?')}, {doc.get('duration_s', 0.0):.2f} s, {device}"


def compare(current: dict[str, Any], baseline: dict[str, Any], k: float) -> Verdict:
    """Every stage of `current` against its baseline row (rule in the module docstring)."""
    verdict = Verdict(describe(current), describe(baseline))
    same_setting = verdict.run == verdict.baseline
    base_rows = {(r["backend"], r["batch"]): r for r in baseline.get("results", [])}
    for row in current["results"]:
        base = base_rows.get((row["backend"], row["batch"])) if same_setting else None
        for name, new in row["stages"].items():
            where = f"{row['backend']} batch {row['batch']} {name}"
            old = None if base is None else base["stages"].get(name)
            if old is None:
                verdict.unmatched.append(where)
                continue
            verdict.compared.append(where)
            allowed = max(MIN_REGRESSION, k * math.hypot(new["cv"], old["cv"]))
            if new["median_ms"] > old["median_ms"] * (1 + allowed):
                change = new["median_ms"] / old["median_ms"] - 1
                verdict.regressions.append(
                    f"{where}: median {new['median_ms']:.2f} ms vs baseline "
                    f"{old['median_ms']:.2f} ms ({change:+.1%}, allowed +{allowed:.1%})"
                )
    return verdict


def load_baseline(path: Path, flag: str = "--compare") -> dict[str, Any]:
    """A finished --json file of this harness; ArtifactError (naming `flag`, the option that gave
    the path) if missing, not JSON, cut short or of the old layout."""
    if not path.is_file():
        raise ArtifactError(f"{flag} {path}: no such file; write one with --json {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{flag} {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ArtifactError(
            f"{flag} {path} has no 'results' list (written by an older benchmarks.latency?); "
            f"write a new baseline with --json"
        )
    if data.get("complete") is False:  # files from before the flag existed are whole
        raise ArtifactError(
            f'{flag} {path} is from a run that was cut short ("complete": false); use a '
            f"finished run's --json as the baseline"
        )
    return data
