"""Several benchmarks.latency runs of one build, timed at once on the GPUs of one host, as one file.

The slow eager baselines need not wait for the engines: on a two-GPU machine one
`benchmarks.latency --json A.json --backends torch,torch-nograph,eager-bf16` runs on GPU 0 while
`--json B.json --backends eager-fp32` runs on GPU 1, and

    python -m benchmarks.merge A.json B.json -o BASELINE.json

joins them into one document that `--compare` reads like any other run. Every row keeps what its
own run measured: its times, its roofline percentages (from its own GPU's measured rates) and its
"x faster than" ratios (against the first backend of its own run). The top-level `roofline` is
the first run's; `merged_from` lists every run's file name, backends, roofline and environment.

The runs must be finished ("complete": true) and agree on what was timed: model, device, duration,
frames, step budgets, config hash, runs and warm-ups, and the commit (git_commit and git_dirty).
No (backend, batch) row may come from two runs. Anything else is an ArtifactError naming the
field, its values and the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.compare import load_baseline
from benchmarks.report import write_json
from presto_common.errors import ArtifactError, PrestoError

# What every merged run must share (top level), and in its environment.
SHARED = (
    "model",
    "device",
    "duration_s",
    "frames",
    "step_budgets",
    "config_hash",
    "runs",
    "warmup",
    "max_batch_runs",
    "max_batch_warmup",
)
SHARED_ENVIRONMENT = ("git_commit", "git_dirty", "gpu", "gpu_driver", "torch", "cuda")


def _field(doc: dict[str, Any], key: str) -> Any:
    """doc[key], or doc["environment"][name] for key "environment.name"."""
    section, _, name = key.rpartition(".")
    return (doc.get(section) or {}).get(name) if section else doc.get(key)


def _check_agree(docs: dict[str, dict[str, Any]]) -> None:
    """ArtifactError unless every run shares the SHARED fields and environment entries."""
    for key in [*SHARED, *(f"environment.{k}" for k in SHARED_ENVIRONMENT)]:
        values = {name: _field(doc, key) for name, doc in docs.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            listed = ", ".join(f"{name}: {v!r}" for name, v in values.items())
            raise ArtifactError(
                f"cannot merge {', '.join(docs)}: they differ in {key} ({listed}); merge only "
                f"runs of one build, one commit and the same --runs/--warmup settings"
            )


def merge(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One latency document from finished runs {file name: document}, in the order given."""
    if len(docs) < 2:
        raise ArtifactError(f"merge needs two runs or more, got {len(docs)}: {list(docs)}")
    _check_agree(docs)
    first = next(iter(docs.values()))
    out: dict[str, Any] = {k: first[k] for k in SHARED if k in first}
    out |= {"complete": True, "backends": [], "roofline": first["roofline"], "max_batch": None}
    out["results"], out["merged_from"] = [], []
    seen: dict[tuple[str, int], str] = {}
    for name, doc in docs.items():
        for row in doc["results"]:
            key = (row["backend"], row["batch"])
            if key in seen:
                raise ArtifactError(
                    f"cannot merge: {row['backend']} at batch {row['batch']} was timed in both "
                    f"{seen[key]} and {name}; give each run its own --backends"
                )
            seen[key] = name
            out["results"].append(row)
        out["backends"] += [b for b in doc.get("backends", []) if b not in out["backends"]]
        if doc.get("max_batch"):
            out["max_batch"] = (out["max_batch"] or {}) | doc["max_batch"]
        out["merged_from"].append(
            {
                "file": name,
                "backends": doc.get("backends", []),
                "roofline": doc["roofline"],
                "environment": doc.get("environment"),
            }
        )
    out["environment"] = first.get("environment")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.merge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN.json", help="benchmarks.latency --json"
    )
    p.add_argument("-o", "--out", type=Path, required=True, metavar="PATH", help="merged file")
    args = p.parse_args(argv)
    try:
        if len(set(args.runs)) != len(args.runs):
            raise ArtifactError(f"a run is named twice: {[str(r) for r in args.runs]}")
        docs = {str(path): load_baseline(path, "merge input") for path in args.runs}
        merged = merge(docs)
    except PrestoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_json(args.out, merged)
    rows = ", ".join(f"{r['backend']} batch {r['batch']}" for r in merged["results"])
    print(f"merged {len(docs)} runs into {args.out}: {rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
