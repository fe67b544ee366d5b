"""benchmarks.latency on the CPU with the tiny ONNX build: `python -m pytest tests/benchmarks -q`.

JSON shape, RTF, costs from the manifest, backends side by side, the max-batch search and step-down
under simulated out-of-memory, the partial JSON of a crashed run, --preset and the --compare exit
codes; usage and user errors are in test_latency_errors.py. The GPU paths (CUDA events, peak memory,
kernel launches, real out-of-memory) do not run here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks import latency
from benchmarks.backends import EngineBackend, parse_backends
from benchmarks.costs import STAGES
from benchmarks.eager import EagerBackend
from runtime import Manifest, sha256_file

FAST = ["--device", "cpu", "--runs", "2", "--warmup", "0", "-q"]


def run_main(argv: list[str]) -> tuple[int, list[str]]:
    """latency.main's exit code and stdout lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = latency.main(argv)
    return code, out.getvalue().strip().splitlines()


@pytest.fixture(scope="module")
def result(build: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str]]:
    """One run of the default backend; its --json document and its stdout lines."""
    path = tmp_path_factory.mktemp("latency") / "run.json"
    code, lines = run_main(["--engines", str(build), *FAST, "--runs", "3", "--json", str(path)])
    assert code == 0
    return json.loads(path.read_text()), lines


@pytest.fixture(scope="module")
def side_by_side(build: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ONNX Runtime and the eager fp32 model in one run, each also at its largest batch (<= 2)."""
    path = tmp_path_factory.mktemp("latency_sbs") / "run.json"
    argv = ["--engines", str(build), *FAST, "--backends", "onnxruntime,eager-fp32"]
    argv += ["--max-batch", "--max-batch-limit", "2", "--max-batch-runs", "3", "--json", str(path)]
    assert run_main(argv)[0] == 0
    return json.loads(path.read_text())


def check_rows(data: dict) -> None:
    """Every row: all stages, ordered statistics, RTF = duration / median, throughput, CPU nulls."""
    for row in data["results"]:
        assert tuple(row["stages"]) == STAGES
        where = f"{row['backend']} batch {row['batch']}"
        for name, r in row["stages"].items():
            assert r["min_ms"] <= r["median_ms"] <= r["p90_ms"], (where, name)
            assert r["rtf"] == pytest.approx(data["duration_s"] / (r["median_ms"] / 1e3)), name
            assert r["flops"] > 0 and r["floor_ms"] > 0 and r["weight_bytes"] > 0, (where, name)
            assert r["peak_mib"] is None, (where, name)  # CPU: no allocator statistics
        e2e = row["stages"]["e2e_stereo"]["median_ms"]
        expected = row["batch"] * data["duration_s"] / (e2e / 1e3)
        assert row["throughput_audio_s_per_s"] == pytest.approx(expected), where
        assert row["kernel_launches"] is None and row["peak_memory_mib"] is None, where


# --- one backend ----------------------------------------------------------------------------------


def test_json_shape_and_rtf(result: tuple[dict, list[str]], build: Path) -> None:
    data, lines = result
    assert data["frames"] == 11 and data["backends"] == ["engines"] and data["complete"] is True
    assert data["max_batch"] is None  # not searched on the CPU unless asked
    assert data["roofline"]["matmul_gflops"] > 0 and data["roofline"]["copy_gbps"] > 0
    env = data["environment"]
    assert env["torch"] and data["config_hash"]
    assert env["manifest_sha256"] == sha256_file(build / "manifest.json")
    for key in ("gpu", "gpu_driver", "cuda", "tensorrt", "onnxruntime", "git_commit", "git_dirty"):
        assert key in env, key
    (row,) = data["results"]
    assert row["backend"] == "engines" and row["runtime_backend"] == "onnx" and row["batch"] == 1
    assert row["stages"]["e2e_stereo"]["runs"] == 3
    check_rows(data)
    # The table first, then the same document as the last stdout line.
    assert "median" in "\n".join(lines[:-1])
    assert json.loads(lines[-1]) == data


def test_costs_are_the_manifests(result: tuple[dict, list[str]], build: Path) -> None:
    """Each stage's FLOPs and weight bytes add up the manifest's artifacts that its calls run."""
    data, _ = result
    stages = data["results"][0]["stages"]
    arts = Manifest.load(build).find

    def one(component: str, **match) -> tuple[int, int]:
        (a,) = arts(component, "onnx", batch=1, **match)
        return a.flops, a.weight_bytes

    dit = [one("dit", frames=11, budget=b) for b in data["step_budgets"]]  # (2, 1, 0, 0)
    expected = {
        "text_encoder": one("text_encoder"),
        "dit_steps": (sum(f for f, _ in dit), sum(w for _, w in dit)),
        "vae_decoder": one("vae_decoder", frames=11),
        "stereo": one("stereo", frames=11),
    }
    for name, (flops, weight_bytes) in expected.items():
        assert (stages[name]["flops"], stages[name]["weight_bytes"]) == (flops, weight_bytes), name
    mono = sum(expected[n][0] for n in ("text_encoder", "dit_steps", "vae_decoder"))
    assert stages["e2e_mono"]["flops"] == mono
    assert stages["e2e_stereo"]["flops"] == mono + expected["stereo"][0]
    for r in stages.values():
        roof = data["roofline"]
        floor = max(r["flops"] / roof["matmul_gflops"], r["weight_bytes"] / roof["copy_gbps"]) / 1e6
        assert r["floor_ms"] == pytest.approx(floor)
        assert r["pct_of_floor"] == pytest.approx(100 * floor / r["median_ms"])


# --- several backends and the largest batch -------------------------------------------------------


def test_backends_side_by_side(side_by_side: dict) -> None:
    data = side_by_side
    assert data["backends"] == ["onnxruntime", "eager-fp32"]
    rows = {(r["backend"], r["batch"]): r for r in data["results"]}
    assert set(rows) == {(b, n) for b in ("onnxruntime", "eager-fp32") for n in (1, 2)}
    assert rows["eager-fp32", 1]["kind"] == "eager" and rows["eager-fp32", 1]["precision"] == "fp32"
    check_rows(data)
    for batch in (1, 2):
        base, eager = rows["onnxruntime", batch], rows["eager-fp32", batch]
        assert eager["speedup"]["baseline_backend"] == "onnxruntime"
        for name in STAGES:
            ratio = base["stages"][name]["median_ms"] / eager["stages"][name]["median_ms"]
            assert eager["speedup"]["stages"][name] == pytest.approx(ratio), name
            assert base["speedup"]["stages"][name] == pytest.approx(1.0), name
            # The same work: the eager model is given the engines' FLOPs at every batch.
            assert eager["stages"][name]["flops"] == base["stages"][name]["flops"], (batch, name)
    # Weights are read once per call: the engines encode prompt by prompt, the eager model at once.
    text = {(b, n): rows[b, n]["stages"]["text_encoder"]["weight_bytes"] for b, n in rows}
    assert text["onnxruntime", 2] == 2 * text["onnxruntime", 1] == 2 * text["eager-fp32", 2]


def test_a_quantized_build_is_timed_beside_its_float_build(
    build: Path, calibrations: dict, tmp_path: Path
) -> None:
    """--also-engines: the INT8 build's engines in the same run, as onnxruntime@int8 (its DiT
    exported here, everything else taken from `build`)."""
    import export

    quantized = tmp_path / "int8"
    export.build_folder(
        quantized,
        preset="tiny",
        backends=("onnx",),
        durations_s=(0.25,),
        verify=False,
        quantization="int8",
        calibration=calibrations["int8"],
        reuse_from=[build],
    )
    path = tmp_path / "run.json"
    argv = ["--engines", str(build), "--also-engines", str(quantized), *FAST]
    argv += ["--backends", "onnxruntime", "--no-max-batch", "--json", str(path)]
    code, lines = run_main(argv)
    assert code == 0
    doc = json.loads(path.read_text())
    assert doc["backends"] == ["onnxruntime", "onnxruntime@int8"]
    rows = {r["backend"]: r for r in doc["results"]}
    assert rows["onnxruntime"]["quantization"] is None
    assert rows["onnxruntime@int8"]["quantization"] == "int8"
    assert rows["onnxruntime@int8"]["folder"] == str(quantized)
    assert set(rows["onnxruntime@int8"]["stages"]) == set(STAGES)
    # the ratio to the first backend, stage by stage, as for any two backends
    assert rows["onnxruntime@int8"]["speedup"]["baseline_backend"] == "onnxruntime"
    assert any("onnxruntime@int8" in line for line in lines)


def test_also_engines_of_another_model_is_refused(build: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    shutil.copytree(build, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["config_hash"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    argv = [
        "--engines",
        str(build),
        "--also-engines",
        str(other),
        *FAST,
        "--backends",
        "onnxruntime",
    ]
    assert run_main(argv)[0] == 1
    assert "compare builds of one model" in capsys.readouterr().err


def test_max_batch(side_by_side: dict) -> None:
    search = side_by_side["max_batch"]
    # Static buckets: the largest built batch that runs, recorded as limited to the build.
    assert search["onnxruntime"]["batch"] == 2
    assert search["onnxruntime"]["limited_to_built_buckets"] is True
    assert search["onnxruntime"]["built_batches"] == [1, 2]
    # Eager: doubling from 1 up to the limit (nothing runs out of memory on the CPU).
    assert search["eager-fp32"]["batch"] == 2 and search["eager-fp32"]["hit_limit"] is True
    assert [(t["batch"], t["fits"]) for t in search["eager-fp32"]["trials"]] == [
        (1, True),
        (2, True),
    ]
    roles = {(r["backend"], r["batch"]): r["batch_role"] for r in side_by_side["results"]}
    assert roles["eager-fp32", 2] == "max" and roles["onnxruntime", 1] == "batch-1"
    for row in side_by_side["results"]:  # --max-batch-runs 3 at the largest batch, --runs 2 else
        assert row["stages"]["vae_decoder"]["runs"] == (3 if row["batch"] == 2 else 2)
    assert side_by_side["max_batch_runs"] == 3 and side_by_side["max_batch_warmup"] == 1


def test_table_shows_blocks_and_ratios(side_by_side: dict) -> None:
    from benchmarks.report import format_report

    table = format_report(side_by_side, STAGES)
    assert "onnxruntime (onnx fp32, no CUDA graph), batch 1" in table
    assert "eager-fp32 (eager fp32, random, init seed 0), batch 2" in table
    assert "x faster than onnxruntime:" in table
    assert "median ms at batch 2 (x faster than onnxruntime)" in table
    assert "eager-fp32: 2, searched up to 2 (the limit)" in table


def limit(monkeypatch: pytest.MonkeyPatch, cls: type, method: str, largest: int) -> None:
    """Make cls.method raise a (simulated) CUDA out-of-memory error above batch `largest`."""
    original = getattr(cls, method)

    def patched(self, batch: int, *args, **kwargs):
        if batch > largest:
            raise torch.cuda.OutOfMemoryError(f"simulated: {method} at batch {batch} > {largest}")
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(cls, method, patched)


def test_out_of_memory_search_and_step_down(
    build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated CUDA OOM. Eager: a generation fits up to 3 (found by bisecting), timing every stage
    only up to 2, so its row steps down to 2. Engines: the batch-2 bucket fails, batch 1 is kept."""
    limit(monkeypatch, EagerBackend, "generate", 3)
    limit(monkeypatch, EagerBackend, "stages", 2)
    limit(monkeypatch, EngineBackend, "generate", 1)
    path = tmp_path / "run.json"
    argv = ["--engines", str(build), *FAST, "--backends", "onnxruntime,eager-fp32", "--max-batch"]
    assert run_main([*argv, "--max-batch-limit", "4", "--json", str(path)])[0] == 0
    data = json.loads(path.read_text())
    eager, engines = data["max_batch"]["eager-fp32"], data["max_batch"]["onnxruntime"]
    trials = [(t["batch"], t["fits"]) for t in eager["trials"]]
    assert trials == [(1, True), (2, True), (4, False), (3, True)]
    assert eager["batch"] == 2 and eager["timing_out_of_memory"] == [3]
    assert eager["hit_limit"] is False
    assert engines["batch"] == 1
    assert [(t["batch"], t["fits"]) for t in engines["trials"]] == [(2, False), (1, True)]
    rows = [(r["backend"], r["batch"]) for r in data["results"]]
    assert rows == [("onnxruntime", 1), ("eager-fp32", 1), ("eager-fp32", 2)]
    assert data["complete"] is True
    check_rows(data)
    assert data["results"][-1]["speedup"] is None  # the first backend has no batch-2 row


def test_a_run_cut_short_keeps_its_rows_and_is_no_baseline(
    build: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash (or a job's time limit) during the max-batch search: the batch-1 row is on disk."""
    generate = EngineBackend.generate

    def crash(self, batch: int, frames: int, stereo: bool):
        if batch > 1:
            raise RuntimeError("simulated crash at batch 2")
        return generate(self, batch, frames, stereo)

    monkeypatch.setattr(EngineBackend, "generate", crash)
    path = tmp_path / "run.json"
    argv = ["--engines", str(build), *FAST, "--backends", "onnxruntime", "--max-batch"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        latency.main([*argv, "--json", str(path)])
    data = json.loads(path.read_text())
    assert data["complete"] is False and data["environment"]["manifest_sha256"]
    assert [(r["backend"], r["batch"]) for r in data["results"]] == [("onnxruntime", 1)]
    check_rows(data)
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left
    capsys.readouterr()
    assert latency.main(["--engines", str(build), *FAST, "--compare", str(path)]) == 1
    assert "cut short" in capsys.readouterr().err


# --- --preset -------------------------------------------------------------------------------------


def test_preset_builds_what_the_backends_need_then_reuses_it(build: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(build, folder)  # an earlier build of the same preset: every file is reused
    argv = ["--preset", "tiny", "--durations-s", "0.25", "--engines", str(folder), *FAST]
    argv += ["--backends", "onnxruntime", "--json", str(tmp_path / "run.json")]
    assert run_main(argv)[0] == 0
    manifest = Manifest.load(folder)
    assert {a.backend for a in manifest.artifacts} == {"onnx"}  # ORT runs the ONNX files
    assert {a.precision for a in manifest.artifacts} == {"fp32"}  # the CPU default
    assert {a.batch for a in manifest.artifacts} == {1}  # --batch-sizes defaults to 1
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["complete"] and [r["backend"] for r in data["results"]] == ["onnxruntime"]
    assert run_main(argv)[0] == 0  # the second run rebuilds nothing
    assert Manifest.load(folder).artifacts == manifest.artifacts


def test_build_backends_for_each_benchmark_backend() -> None:
    from benchmarks.prepare import build_backends

    def for_(names: str, device: str) -> list[str]:
        return build_backends(parse_backends(names), device)

    assert for_("engines", "cuda") == ["torch"] and for_("engines", "cpu") == ["onnx"]
    assert for_("torch,torch-nograph,eager-bf16", "cuda") == ["torch"]
    assert for_("onnxruntime,tensorrt", "cpu") == ["onnx", "tensorrt"]
    assert for_("eager-fp32", "cpu") == ["onnx"]  # only a manifest is needed: the cheapest build


# --- the --compare exit codes (the run itself is the fixture's, replayed) -------------------------


@pytest.fixture
def replay(result: tuple[dict, list[str]], monkeypatch: pytest.MonkeyPatch) -> dict:
    """latency.main's run is the `result` fixture's document: --compare is tested without timing."""
    data = {k: v for k, v in result[0].items() if k != "environment"}
    monkeypatch.setattr(latency, "run_benchmark", lambda *args: copy.deepcopy(data))
    return data


def compare_main(
    build: Path, baseline: Path, capsys: pytest.CaptureFixture, *extra: str
) -> tuple[int, str]:
    capsys.readouterr()
    code = latency.main(["--engines", str(build), *FAST, "--compare", str(baseline), *extra])
    return code, capsys.readouterr().err


def test_compare_passes_against_itself(
    replay: dict, build: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "self.json").write_text(json.dumps(replay))
    code, err = compare_main(build, tmp_path / "self.json", capsys)
    assert code == 0, err
    assert "compared 6 stages of tiny, 0.24 s, cpu (engines batch 1): no regression" in err


def test_compare_fails_on_a_regression(
    replay: dict, build: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    faster = copy.deepcopy(replay)  # a baseline 3x faster in every stage
    for row in faster["results"][0]["stages"].values():
        row["median_ms"] /= 3
    (tmp_path / "faster.json").write_text(json.dumps(faster))
    # K = 0: only the 5% floor allows a slowdown, whatever the spread of CPU timings.
    code, err = compare_main(build, tmp_path / "faster.json", capsys, "--threshold-sigmas", "0")
    assert code == 1
    for name in STAGES:
        assert f"REGRESSION engines batch 1 {name}: median" in err
    assert err.strip().splitlines()[-1].endswith("6 regressed")


def test_compare_refuses_to_pass_vacuously(
    replay: dict, build: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The committed H100 baseline: another model, duration and device, so no row matches.
    committed = Path(__file__).parents[2] / "benchmarks/baselines/h100-presto-ls-bf16.json"
    code, err = compare_main(build, committed, capsys)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line == (
        f"--compare {committed}: no stage of this run (tiny, 0.24 s, cpu: engines batch 1) has a "
        f"row in the baseline (presto-ls, 32.00 s, cuda); compare runs of the same model, "
        f"duration and device"
    )
    # A baseline of the same setting but another backend: no row of the run is in it.
    other = copy.deepcopy(replay)
    other["results"][0]["backend"] = "torch"
    (tmp_path / "other.json").write_text(json.dumps(other))
    code, err = compare_main(build, tmp_path / "other.json", capsys)
    assert code == 1 and "engines batch 1" in err
