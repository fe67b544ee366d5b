"""benchmarks.latency on the CPU with a tiny ONNX build: `python -m pytest tests/benchmarks -q`.

JSON shape, RTF, backends side by side, max-batch search, the launch counter and the --compare gate.
The GPU paths (CUDA events, peak memory, kernel launches, out-of-memory trials) do not run here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import latency
from benchmarks.compare import compare
from benchmarks.max_batch import double_then_bisect, fits_in_memory, largest_fitting
from benchmarks.measure import count_launches
from runtime.manifest import Manifest, sha256_file

pytest.importorskip("onnxruntime")

FAST = ["--device", "cpu", "--runs", "2", "--warmup", "0", "-q"]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Batch buckets 1 and 2 at 1 s: the batch-2 bucket serves the max-batch test."""
    from export.build import main as build_main

    out = tmp_path_factory.mktemp("latency") / "tiny"
    argv = ["--preset", "tiny", "--backends", "onnx", "--durations-s", "1", "--batch-sizes", "1,2"]
    assert build_main([*argv, "--no-verify", "--out", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def result(build: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    path = tmp_path_factory.mktemp("latency_json") / "run.json"
    args = ["--engines", str(build), "--device", "cpu", "--runs", "5", "--warmup", "1", "-q"]
    assert latency.main([*args, "--json", str(path)]) == 0
    return json.loads(path.read_text()), path


@pytest.fixture(scope="module")
def side_by_side(build: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ONNX Runtime and the eager fp32 model in one run, each also at its largest batch (<= 2)."""
    path = tmp_path_factory.mktemp("latency_sbs") / "run.json"
    argv = ["--engines", str(build), *FAST, "--backends", "onnxruntime,eager-fp32"]
    argv += ["--max-batch", "--max-batch-limit", "2", "--max-batch-runs", "3", "--json", str(path)]
    assert latency.main(argv) == 0
    return json.loads(path.read_text())


def check_rows(data: dict) -> None:
    """Every row: all stages, ordered statistics, RTF = duration / median, throughput, CPU nulls."""
    for row in data["results"]:
        assert set(row["stages"]) == set(latency.STAGES)
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


def test_json_shape_and_rtf(result: tuple[dict, Path], build: Path) -> None:
    data, _ = result
    assert data["frames"] == 46 and data["backends"] == ["engines"] and data["complete"] is True
    assert data["max_batch"] is None  # not searched on the CPU unless asked
    assert data["roofline"]["matmul_gflops"] > 0 and data["roofline"]["copy_gbps"] > 0
    env = data["environment"]
    assert env["torch"] and data["config_hash"]
    assert env["manifest_sha256"] == sha256_file(build / "manifest.json")
    for key in ("gpu", "gpu_driver", "cuda", "tensorrt", "onnxruntime", "git_commit", "git_dirty"):
        assert key in env, key
    (row,) = data["results"]
    assert row["backend"] == "engines" and row["runtime_backend"] == "onnx" and row["batch"] == 1
    assert row["stages"]["e2e_stereo"]["runs"] == 5
    check_rows(data)
    stages = row["stages"]
    assert stages["e2e_stereo"]["flops"] == stages["e2e_mono"]["flops"] + stages["stereo"]["flops"]


def test_last_stdout_line_is_the_json(build: Path, capsys: pytest.CaptureFixture) -> None:
    assert latency.main(["--engines", str(build), *FAST]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "median" in "\n".join(lines[:-1])  # the table comes first
    assert set(json.loads(lines[-1])["results"][0]["stages"]) == set(latency.STAGES)


# --- several backends and the largest batch -------------------------------------------------------


def test_backends_side_by_side(side_by_side: dict) -> None:
    data = side_by_side
    assert data["backends"] == ["onnxruntime", "eager-fp32"]
    rows = {(r["backend"], r["batch"]): r for r in data["results"]}
    assert set(rows) == {
        ("onnxruntime", 1),
        ("onnxruntime", 2),
        ("eager-fp32", 1),
        ("eager-fp32", 2),
    }
    assert rows["eager-fp32", 1]["kind"] == "eager" and rows["eager-fp32", 1]["precision"] == "fp32"
    check_rows(data)
    for batch in (1, 2):
        base, eager = rows["onnxruntime", batch], rows["eager-fp32", batch]
        assert eager["speedup"]["baseline_backend"] == "onnxruntime"
        for name in latency.STAGES:
            ratio = base["stages"][name]["median_ms"] / eager["stages"][name]["median_ms"]
            assert eager["speedup"]["stages"][name] == pytest.approx(ratio), name
            assert base["speedup"]["stages"][name] == pytest.approx(1.0), name


def test_max_batch(side_by_side: dict) -> None:
    search = side_by_side["max_batch"]
    # Static buckets: the largest built batch that runs, recorded as limited to the build.
    assert search["onnxruntime"]["batch"] == 2
    assert search["onnxruntime"]["limited_to_built_buckets"] is True
    assert search["onnxruntime"]["built_batches"] == [1, 2]
    # Eager: doubling from 1 up to the limit (nothing runs out of memory on the CPU).
    assert search["eager-fp32"]["batch"] == 2 and search["eager-fp32"]["hit_limit"] is True
    assert search["eager-fp32"]["trials"] == [
        {"batch": 1, "fits": True},
        {"batch": 2, "fits": True},
    ]
    roles = {(r["backend"], r["batch"]): r["batch_role"] for r in side_by_side["results"]}
    assert roles["eager-fp32", 2] == "max" and roles["onnxruntime", 1] == "batch-1"
    for row in side_by_side["results"]:  # --max-batch-runs 3 at the largest batch, --runs 2 else
        assert row["stages"]["vae_decoder"]["runs"] == (3 if row["batch"] == 2 else 2)
    assert side_by_side["max_batch_runs"] == 3 and side_by_side["max_batch_warmup"] == 1


def test_table_shows_blocks_and_ratios(side_by_side: dict) -> None:
    from benchmarks.report import format_report

    table = format_report(side_by_side, latency.STAGES)
    assert "onnxruntime (onnx fp32, no CUDA graph), batch 1" in table
    assert "eager-fp32 (eager fp32, random, init seed 0), batch 2" in table
    assert "x faster than onnxruntime:" in table
    assert "median ms at batch 2 (x faster than onnxruntime)" in table
    assert "eager-fp32: 2, searched up to 2 (the limit)" in table


def test_out_of_memory_trials(build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated CUDA OOM: eager bisects to 3; the engines fall back to the batch-1 bucket."""
    from benchmarks import backends

    def limited(cls: type, largest: int) -> None:
        generate = cls.generate

        def patched(self, batch: int, frames: int, stereo: bool):
            if batch > largest:
                raise torch.cuda.OutOfMemoryError(f"simulated: batch {batch} > {largest}")
            return generate(self, batch, frames, stereo)

        monkeypatch.setattr(cls, "generate", patched)

    limited(backends.EagerBackend, 3)
    limited(backends.EngineBackend, 1)
    path = tmp_path / "run.json"
    argv = ["--engines", str(build), *FAST, "--backends", "onnxruntime,eager-fp32", "--max-batch"]
    assert latency.main([*argv, "--max-batch-limit", "4", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    eager, engines = data["max_batch"]["eager-fp32"], data["max_batch"]["onnxruntime"]
    assert eager["batch"] == 3 and eager["hit_limit"] is False
    assert [(t["batch"], t["fits"]) for t in eager["trials"]] == [
        (1, True),
        (2, True),
        (4, False),
        (3, True),
    ]
    assert engines["batch"] == 1
    assert [(t["batch"], t["fits"]) for t in engines["trials"]] == [(2, False), (1, True)]
    assert sorted((r["backend"], r["batch"]) for r in data["results"]) == [
        ("eager-fp32", 1),
        ("eager-fp32", 3),
        ("onnxruntime", 1),
    ]
    check_rows(data)
    eager3 = next(r for r in data["results"] if r["batch"] == 3)
    assert eager3["speedup"] is None  # the first backend has no batch-3 row to compare with


def test_timing_out_of_memory_steps_down(
    build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One generation fits at 4, but timing every stage there does not: the row is at 2, the next
    batch whose generation was seen to fit."""
    from benchmarks import backends

    stages = backends.EagerBackend.stages

    def tight(self, batch: int, frames: int):
        if batch > 3:
            raise torch.cuda.OutOfMemoryError(f"simulated: stages at batch {batch}")
        return stages(self, batch, frames)

    monkeypatch.setattr(backends.EagerBackend, "stages", tight)
    path = tmp_path / "run.json"
    argv = ["--engines", str(build), *FAST, "--backends", "eager-fp32", "--max-batch"]
    assert latency.main([*argv, "--max-batch-limit", "4", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    search = data["max_batch"]["eager-fp32"]
    assert [t["batch"] for t in search["trials"]] == [1, 2, 4]  # every generation fitted
    assert search["batch"] == 2 and search["timing_out_of_memory"] == [4]  # 3 was never tried
    assert [r["batch"] for r in data["results"]] == [1, 2]
    assert data["complete"] is True
    check_rows(data)


def test_max_batch_search_rules() -> None:
    s = double_then_bisect(lambda b: b <= 37, 256)
    assert s.batch == 37
    assert [t["batch"] for t in s.trials] == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert double_then_bisect(lambda b: True, 100).batch == 100  # capped, never above the limit
    assert double_then_bisect(lambda b: b <= 5, 6).batch == 5  # 1, 2, 4, 6 (fails), 5
    assert double_then_bisect(lambda b: False, 8).batch == 0
    s = largest_fitting(lambda b: b <= 8, [16, 1, 8, 4])
    assert (s.batch, [t["batch"] for t in s.trials]) == (8, [16, 8])
    assert s.to_json()["built_batches"] == [1, 4, 8, 16]


def test_only_out_of_memory_counts_as_not_fitting() -> None:
    def oom() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    def bug() -> None:
        raise RuntimeError("a bug, not memory")

    cpu = torch.device("cpu")
    assert fits_in_memory(lambda: None, cpu) is True
    assert fits_in_memory(oom, cpu) is False
    with pytest.raises(RuntimeError, match="a bug"):
        fits_in_memory(bug, cpu)


def test_a_wrapped_out_of_memory_counts_when_the_allocator_saw_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AOTInductor turns an OOM inside a package into RuntimeError; the allocator's count tells."""
    from benchmarks import max_batch

    ooms = [0]
    monkeypatch.setattr(max_batch, "oom_count", lambda device: ooms[0])

    def package_oom() -> None:
        ooms[0] += 1  # what the caching allocator records before the package wraps the error
        raise RuntimeError("run_func_(...) API call failed at model_container_runner.cpp")

    def package_bug() -> None:
        raise RuntimeError("run_func_(...) API call failed at model_container_runner.cpp")

    cuda = torch.device("cuda", 0)  # only handed to the patched counter; nothing touches a GPU
    monkeypatch.setattr(max_batch, "free_memory", lambda device: None)
    assert fits_in_memory(package_oom, cuda) is False
    with pytest.raises(RuntimeError, match="API call failed"):
        fits_in_memory(package_bug, cuda)


def test_count_launches() -> None:
    api = [
        "aten::mm",
        "cudaLaunchKernel",
        "cudaLaunchKernel",
        "cudaLaunchKernelExC_v11060",  # CUPTI's versioned name
        "cuLaunchKernel",
        "cuLaunchKernelEx",
        "cudaGraphLaunch",
        "cudaMemcpyAsync",
        "cudaStreamSynchronize",
    ]
    gpu = [
        "sm90_xmma_gemm",
        "triton_poi_fused_0",
        "Memcpy HtoD (Pageable -> Device)",
        "Memset (Device)",
    ]
    assert count_launches(api, gpu) == {
        "kernel_launch_calls": 5,
        "graph_launches": 1,
        "gpu_kernels": 2,
    }
    assert count_launches([], []) == {
        "kernel_launch_calls": 0,
        "graph_launches": 0,
        "gpu_kernels": 0,
    }


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backends", "onnxruntime,tensorflow"], "unknown backend 'tensorflow'"),
        (["--backends", "torch,torch"], "backend torch is listed twice"),
        (["--checkpoint", "ckpt"], "--checkpoint only applies to eager-fp32 / eager-bf16"),
        (["--batch-sizes", "1,4"], "--batch-sizes only apply with --preset"),
    ],
)
def test_usage_errors(
    build: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        latency.main(["--engines", str(build), *FAST, *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_neither_engines_nor_preset(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        latency.main(FAST)
    assert exc.value.code == 2
    assert "give --engines DIR (a build folder), or --preset NAME" in capsys.readouterr().err


def test_preset_builds_what_the_backends_need_then_reuses_it(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "tiny"
    argv = ["--preset", "tiny", "--durations-s", "1", "--engines", str(folder), *FAST]
    argv += ["--backends", "onnxruntime,eager-fp32", "--json", str(tmp_path / "run.json")]
    assert latency.main(argv) == 0
    manifest = Manifest.load(folder)
    assert {a.backend for a in manifest.artifacts} == {"onnx"}  # ORT runs the ONNX files
    assert {a.precision for a in manifest.artifacts} == {"fp32"}  # the CPU default
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["complete"] and [r["backend"] for r in data["results"]] == [
        "onnxruntime",
        "eager-fp32",
    ]
    capsys.readouterr()
    assert latency.main(argv) == 0  # the second run rebuilds nothing
    assert Manifest.load(folder).artifacts == manifest.artifacts


def test_build_backends_for_each_benchmark_backend() -> None:
    from benchmarks.backends import parse_backends
    from benchmarks.prepare import build_backends

    def for_(names: str, device: str) -> list[str]:
        return build_backends(parse_backends(names), device)

    assert for_("engines", "cuda") == ["torch"] and for_("engines", "cpu") == ["onnx"]
    assert for_("torch,torch-nograph,eager-bf16", "cuda") == ["torch"]
    assert for_("onnxruntime,tensorrt", "cpu") == ["onnx", "tensorrt"]
    assert for_("eager-fp32", "cpu") == ["onnx"]  # only a manifest is needed: the cheapest build


def test_checkpoint_of_another_config(
    build: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from presto_ref.checkpoint import random_model, save_checkpoint
    from presto_ref.presets import get_preset

    other = save_checkpoint(random_model(get_preset("tiny").replace(name="other")), tmp_path / "c")
    argv = ["--engines", str(build), *FAST, "--backends", "eager-fp32", "--checkpoint", str(other)]
    assert latency.main(argv) == 1
    assert "the build was made from" in capsys.readouterr().err


def test_eager_without_presto_ref(
    build: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "presto_ref", None)  # makes `import presto_ref` fail
    assert latency.main(["--engines", str(build), *FAST, "--backends", "eager-bf16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: backend eager-bf16 needs presto_ref")


def test_a_run_cut_short_keeps_its_rows_and_is_no_baseline(
    build: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash (or a job's time limit) in the second backend: the first one's rows are on disk."""
    from benchmarks import backends

    def crash(self, batch: int, frames: int):
        raise RuntimeError("simulated crash in the second backend")

    monkeypatch.setattr(backends.EagerBackend, "stages", crash)
    path = tmp_path / "run.json"
    argv = ["--engines", str(build), *FAST, "--backends", "onnxruntime,eager-fp32"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        latency.main([*argv, "--json", str(path)])
    data = json.loads(path.read_text())
    assert data["complete"] is False and data["environment"]["manifest_sha256"]
    assert [(r["backend"], r["batch"]) for r in data["results"]] == [("onnxruntime", 1)]
    check_rows(data)
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left
    monkeypatch.undo()
    capsys.readouterr()
    assert latency.main(["--engines", str(build), *FAST, "--compare", str(path)]) == 1
    assert "cut short" in capsys.readouterr().err


def test_baseline_of_the_old_layout(
    build: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"stages": {"vae_decoder": {"median_ms": 1.0, "cv": 0.0}}}))
    assert latency.main(["--engines", str(build), *FAST, "--compare", str(old)]) == 1
    assert "has no 'results' list" in capsys.readouterr().err


# --- the regression gate --------------------------------------------------------------------------


def test_compare_gate(
    result: tuple[dict, Path], build: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data, path = result
    argv = ["--engines", str(build), "--device", "cpu", "--runs", "5", "--warmup", "1", "-q"]
    # Identical medians never regress.
    assert compare(data, data, 3.0).ok
    # A baseline 1000x faster: every stage is now far beyond the 5% floor (K = 0).
    faster = json.loads(path.read_text())
    for row in faster["results"][0]["stages"].values():
        row["median_ms"] /= 1000
    doctored = tmp_path / "faster.json"
    doctored.write_text(json.dumps(faster))
    capsys.readouterr()
    assert latency.main([*argv, "--compare", str(doctored), "--threshold-sigmas", "0"]) == 1
    err = capsys.readouterr().err
    for name in ("dit_steps", "vae_decoder", "e2e_stereo"):
        assert f"REGRESSION engines batch 1 {name}:" in err


def test_compare_against_itself_exits_0(build: Path, tmp_path: Path) -> None:
    # The same run as its own baseline: identical medians never regress.
    path = tmp_path / "self.json"
    argv = ["--engines", str(build), "--device", "cpu", "--runs", "3", "--warmup", "1", "-q"]
    assert latency.main([*argv, "--json", str(path)]) == 0
    baseline = json.loads(path.read_text())
    assert compare(baseline, baseline, 3.0).ok
    # and a fresh run against that file passes the gate with a generous K (CPU noise is large)
    assert latency.main([*argv, "--compare", str(path), "--threshold-sigmas", "50"]) == 0
