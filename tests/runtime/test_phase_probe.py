"""scripts/phase_probe.py on the tiny ONNX build: every phase it hooks is timed in every run (a
renamed runtime method would leave its phase at 0, silently), and the hooks are removed after."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from runtime.bucket import Bucket
from runtime.host_copy import HostStaging

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "phase_probe.py"


def _load():
    spec = importlib.util.spec_from_file_location("phase_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_phase_is_timed_and_the_hooks_are_removed(build: Path, tmp_path: Path) -> None:
    probe = _load()
    before = {name: getattr(cls, m) for name, (cls, m) in probe.PHASES.items()}
    out = tmp_path / "probe.json"
    argv = ["--engines", str(build), "--device", "cpu", "--runs", "10", "--warmup", "1"]
    assert probe.main([*argv, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["runs"]) == 10
    for run in doc["runs"]:
        for name in probe.PHASES:
            assert run[name] > 0, f"phase {name} was never timed: is {probe.PHASES[name]} renamed?"
        assert abs(sum(run[n] for n in [*probe.PHASES, "rest"]) - run["total"]) < 1e-6
    summary = doc["summary"]["total"]
    assert summary["p50"] <= summary["p90"] <= summary["max"]
    after = {name: getattr(cls, m) for name, (cls, m) in probe.PHASES.items()}
    assert after == before and Bucket.run is before["chain"]
    assert HostStaging.to_host is before["to_host"]


def test_stages_split_the_chain_and_the_bucket_keeps_its_engines(
    build: Path, tmp_path: Path
) -> None:
    """--stages: the DiT, decoder and mono-to-stereo calls are each timed in every run, and the
    bucket's engines are its own again afterwards (a wrapper left on it would time every later
    call of a long-lived pipeline)."""
    probe = _load()
    from runtime import Pipeline

    pipe = Pipeline(build, device="cpu", cuda_graph=False)
    bucket = pipe.bucket(1, pipe.catalog.seconds(pipe.frames_for(None)))
    engines, sample = (bucket._decoder, bucket._m2s), Bucket._sample
    rows = probe.probe(pipe, runs=3, warmup=1, batch=1, stereo=True, stages=True)
    for run in rows:
        for name in ("text", "noise", "dit", "vae", "stereo", "to_host"):
            assert run[name] > 0, f"stage {name} was never timed"
        assert "chain" not in run
        assert run["dit"] + run["vae"] + run["stereo"] < run["total"]
    assert (bucket._decoder, bucket._m2s) == engines
    assert Bucket._sample is sample
    summary = probe.summary(rows)
    assert list(summary)[-2:] == ["rest", "total"] and "dit" in summary
