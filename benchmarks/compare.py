"""The regression gate of benchmarks.latency: rows matched by (backend, batch, stage).

A stage regresses when median_new > median_base x (1 + max(5%, K x sqrt(cv_new^2 + cv_base^2))):
the slowdown must exceed both 5% and K combined run-to-run spreads (coefficients of variation).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from presto_common.errors import ArtifactError

log = logging.getLogger(__name__)

MIN_REGRESSION = 0.05  # a slowdown below 5% never counts as a regression


def compare(current: dict[str, Any], baseline: dict[str, Any], k: float) -> list[str]:
    """(backend, batch, stage) rows whose median regressed (rule in the module docstring)."""
    base_rows = {(r["backend"], r["batch"]): r for r in baseline.get("results", [])}
    regressed = []
    for row in current["results"]:
        base = base_rows.get((row["backend"], row["batch"]))
        if base is None:
            log.info(
                "--compare: no baseline row for %s at batch %d; skipped",
                row["backend"],
                row["batch"],
            )
            continue
        for name, new in row["stages"].items():
            old = base["stages"].get(name)
            if old is None:
                continue
            allowed = max(MIN_REGRESSION, k * math.hypot(new["cv"], old["cv"]))
            if new["median_ms"] > old["median_ms"] * (1 + allowed):
                change = new["median_ms"] / old["median_ms"] - 1
                regressed.append(
                    f"{row['backend']} batch {row['batch']} {name}: median "
                    f"{new['median_ms']:.2f} ms vs baseline {old['median_ms']:.2f} ms "
                    f"({change:+.1%}, allowed +{allowed:.1%})"
                )
    return regressed


def load_baseline(path: Path) -> dict[str, Any]:
    """A finished --json file of this harness; ArtifactError if missing, not JSON, cut short or of
    the old layout."""
    if not path.is_file():
        raise ArtifactError(f"--compare {path}: no such file; write one with --json {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"--compare {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ArtifactError(
            f"--compare {path} has no 'results' list (written by an older benchmarks.latency?); "
            f"write a new baseline with --json"
        )
    if data.get("complete") is False:  # files from before the flag existed are whole
        raise ArtifactError(
            f'--compare {path} is from a run that was cut short ("complete": false); use a '
            f"finished run's --json as the baseline"
        )
    return data
