"""benchmarks.serve without a server: `python -m pytest tests/benchmarks/test_serve_bench.py`.

The GPU memory parsing of Triton's metrics page, the load loop's bookkeeping with a fake client
that sleeps a few ms and fails every k-th call, and main's exit codes and JSON.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from benchmarks import load, serve
from benchmarks.measure import MIB
from presto_common.errors import ServerError
from runtime import Client

GIB = 2**30
TWO_GPUS = f"""\
# HELP nv_gpu_memory_used_bytes GPU used memory (bytes)
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{{gpu_uuid="GPU-aaaa"}} {3 * GIB}
nv_gpu_memory_used_bytes{{gpu_uuid="GPU-bbbb"}} {GIB // 2}
# HELP nv_gpu_memory_total_bytes GPU total memory (bytes)
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{{gpu_uuid="GPU-aaaa"}} {140 * GIB}
nv_gpu_memory_total_bytes{{gpu_uuid="GPU-bbbb"}} {140 * GIB}
nv_gpu_memory_used_bytes_peak{{gpu_uuid="GPU-aaaa"}} 123
nv_gpu_utilization{{gpu_uuid="GPU-aaaa"}} 0.5
nv_inference_count{{model="presto",version="1"}} 42
"""
CPU_ONLY = """\
# HELP nv_inference_count Number of inferences performed
# TYPE nv_inference_count counter
nv_inference_count{model="presto",version="1"} 7
nv_cpu_memory_used_bytes 1.0e+09
"""


# --- GPU memory -----------------------------------------------------------------------------------


def test_gpu_memory_sums_used_and_total_over_gpus() -> None:
    m = serve.gpu_memory(TWO_GPUS)
    assert m["gpus"] == 2 and m["reason"] is None
    assert m["used_mib"] == pytest.approx((3 * GIB + GIB // 2) / MIB)
    assert m["total_mib"] == pytest.approx(2 * 140 * GIB / MIB)


def test_gpu_memory_without_gpu_lines_is_null_with_the_reason() -> None:
    m = serve.gpu_memory(CPU_ONLY)
    assert m["used_mib"] is None and m["total_mib"] is None and m["gpus"] == 0
    assert "no nv_gpu_memory_used_bytes lines" in m["reason"]


def test_unreachable_metrics_are_null_with_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = serve.read_gpu_memory(f"127.0.0.1:{port}", timeout_s=5)
    assert m["used_mib"] is None and f"http://127.0.0.1:{port}/metrics" in m["reason"]


# --- the load loop --------------------------------------------------------------------------------

SLEEP_S = 0.004
SAMPLE_RATE, SAMPLES = 1000, 500  # 0.5 s of audio per answer


class FakeClient:
    """Sleeps SLEEP_S per call and fails every k-th call of this client (1-based); logs seeds."""

    def __init__(self, k: int, seeds: list[int]) -> None:
        self.k, self.calls, self.seeds, self.closed = k, 0, seeds, False

    def generate(self, prompt, seed, duration_s=None, mono=False):
        self.calls += 1
        self.seeds.append(seed)
        time.sleep(SLEEP_S)
        if self.calls % self.k == 0:
            raise ServerError(f"refused call {self.k}n")
        return np.zeros((1 if mono else 2, SAMPLES), np.float32), SAMPLE_RATE

    def close(self) -> None:
        self.closed = True


def test_run_load_counts_the_window_and_computes_throughput_from_audio() -> None:
    k, concurrency, seeds, clients = 4, 3, [], []
    lock = threading.Lock()

    def make_client() -> FakeClient:
        with lock:
            clients.append(FakeClient(k, seeds))
            return clients[-1]

    r = load.run_load(make_client, concurrency, duration_s=0.4, warmup_s=0.1)
    assert len(clients) == concurrency + 1 and all(c.closed for c in clients)  # + the probe
    assert len(seeds) == len(set(seeds))  # a new seed every request
    total = sum(c.calls for c in clients)
    assert r["requests"] + r["warmup_requests"] + 1 == total
    assert r["warmup_requests"] > 0 and r["requests"] > 20
    assert r["ok"] + r["errors"] == r["requests"]
    # Every client fails each k-th of its own consecutive calls: within one per client of 1/k.
    assert abs(r["errors"] - r["requests"] / k) <= concurrency
    assert r["error_messages"] == [{"message": f"refused call {k}n", "count": r["errors"]}]
    assert 0.4 <= r["wall_s"] < 0.4 + 0.5
    assert r["audio_s_per_request"] == pytest.approx(SAMPLES / SAMPLE_RATE)
    assert r["throughput_audio_s_per_s"] == pytest.approx(r["ok"] * 0.5 / r["wall_s"])
    assert r["requests_per_s"] == pytest.approx(r["ok"] / r["wall_s"])
    lat = r["latency_ms"]
    assert SLEEP_S * 1e3 <= lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def test_summarize_load_percentiles_errors_and_throughput() -> None:
    # 100 requests at t = 10 + i/100 s, each taking (i + 1) ms; every 10th failed; two warm-ups.
    records = [(9.0, 9.5, 2.0, None), (9.6, 10.2, 2.0, "x")]
    for i in range(100):
        start = 10 + i / 100
        records.append(
            (start, start + (i + 1) / 1e3, 2.0 if i % 10 else 0.0, "no" if i % 10 == 0 else None)
        )
    r = load.summarize_load(records, window_start=10.0, duration_s=1.0, concurrency=1, warmup_s=1)
    assert (r["requests"], r["ok"], r["errors"], r["warmup_requests"]) == (100, 90, 10, 2)
    assert r["error_messages"] == [{"message": "no", "count": 10}]
    ok_ms = sorted(i + 1 for i in range(100) if i % 10)  # 2..10, 12..20, ...: 90 values
    lat = r["latency_ms"]
    assert lat["p50"] == pytest.approx(ok_ms[44]) and lat["p90"] == pytest.approx(ok_ms[80])
    assert lat["p99"] == pytest.approx(ok_ms[89]) and lat["min"] == pytest.approx(2)
    wall = 0.99 + 0.1  # the last request starts at 10.99 s and takes 100 ms
    assert r["wall_s"] == pytest.approx(wall)
    assert r["throughput_audio_s_per_s"] == pytest.approx(90 * 2.0 / wall)
    assert r["requests_per_s"] == pytest.approx(90 / wall)
    timeline = r["timeline"]  # the counted requests in start order, failures marked
    assert len(timeline) == 100 and timeline[0] == [0.0, 1.0, False]
    assert timeline[1] == [0.01, 2.0, True] and sum(not ok for _, _, ok in timeline) == 10


def test_a_refused_probe_stops_the_load_before_it_starts() -> None:
    made = []

    def make_client() -> FakeClient:
        made.append(FakeClient(1, []))  # every call refused
        return made[-1]

    with pytest.raises(ServerError, match="refused call 1n"):
        load.run_load(make_client, 4, duration_s=10, warmup_s=10)
    assert len(made) == 1


def test_a_bug_in_a_worker_is_raised_not_counted() -> None:
    class Broken(FakeClient):
        def generate(self, *args, **kwargs):
            raise KeyError("bug")

    made = []

    def make_client() -> FakeClient:  # the probe passes, the load's clients break
        made.append(FakeClient(100, []) if not made else Broken(100, []))
        return made[-1]

    with pytest.raises(KeyError, match="bug"):
        load.run_load(make_client, 2, duration_s=5, warmup_s=0)
    assert len(made) == 3 and all(c.closed for c in made)


class FileClient:
    """Picklable for client processes: answers 0.5 s of audio after SLEEP_S and appends each
    seed to a file of its own in `folder`."""

    def __init__(
        self, folder: str, fail_outside_pid: int | None = None, fail_odd_seeds: bool = False
    ) -> None:
        self.path = Path(folder) / f"seeds-{uuid.uuid4().hex}.txt"
        self.fail_outside_pid, self.fail_odd_seeds = fail_outside_pid, fail_odd_seeds

    def generate(self, prompt, seed, duration_s=None, mono=False):
        if self.fail_outside_pid not in (None, os.getpid()):
            raise KeyError(f"bug in process {os.getpid()}")
        if self.fail_odd_seeds and seed % 2:
            raise KeyError(f"bug at seed {seed}")
        time.sleep(SLEEP_S)
        with self.path.open("a") as f:
            f.write(f"{seed}\n")
        return np.zeros((2, SAMPLES), np.float32), SAMPLE_RATE


def test_workers_in_several_processes_share_one_window_and_never_repeat_a_seed(tmp_path) -> None:
    make_client = functools.partial(FileClient, str(tmp_path))
    r = load.run_load(make_client, 5, duration_s=1.0, warmup_s=0.5, processes=2)
    seeds = [int(x) for f in tmp_path.glob("seeds-*.txt") for x in f.read_text().split()]
    assert len(list(tmp_path.glob("seeds-*.txt"))) == 5 + 1  # a client per worker, + the probe
    assert len(seeds) == len(set(seeds)) == r["requests"] + r["warmup_requests"] + 1
    assert r["errors"] == 0 and r["warmup_requests"] > 0 and r["requests"] > 50
    # both processes counted against one window: the run ends one request after it
    assert 1.0 <= r["wall_s"] < 1.0 + 0.5


def test_a_failure_in_a_client_process_is_raised_here(tmp_path) -> None:
    # the probe, in this process, passes; the clients of the spawned processes break
    make_client = functools.partial(FileClient, str(tmp_path), os.getpid())
    with pytest.raises(KeyError, match="bug in process"):
        load.run_load(make_client, 2, duration_s=1.0, warmup_s=0.0, processes=2)


def test_a_failure_in_one_client_process_stops_the_others(tmp_path) -> None:
    """Two processes: the first draws seeds 1, 3, 5... and fails at once; the second, whose seeds
    are even, would run the whole 60 s window if the failure did not stop it too."""
    make_client = functools.partial(FileClient, str(tmp_path), None, True)
    start = time.monotonic()
    with pytest.raises(KeyError, match="bug at seed"):
        load.run_load(make_client, 2, duration_s=60.0, warmup_s=0.0, processes=2)
    assert time.monotonic() - start < 30  # start-up (spawn, imports) plus one request, not 60 s


# --- main -----------------------------------------------------------------------------------------


def fake_memory(url: str, timeout_s: float = 10.0) -> dict:
    return serve.gpu_memory(TWO_GPUS)


def stats(inferences: int, executions: int, ms: dict, rows: dict) -> dict:
    """A Triton model_stats entry: cumulative counts and nanoseconds per phase."""
    return {
        "inference_count": inferences,
        "execution_count": executions,
        "inference_stats": {p: {"count": inferences, "ns": int(v * 1e6)} for p, v in ms.items()},
        "batch_stats": [
            {"batch_size": b, "compute_infer": {"count": n, "ns": 0}} for b, n in rows.items()
        ],
    }


ZERO = {"queue": 0, "compute_input": 0, "compute_infer": 0, "compute_output": 0}


def test_server_time_is_per_request_between_two_readings() -> None:
    before = stats(
        10,
        10,
        {"queue": 5, "compute_input": 1, "compute_infer": 500, "compute_output": 20},
        {1: 10},
    )
    after = stats(
        30,
        15,
        {"queue": 45, "compute_input": 3, "compute_infer": 1500, "compute_output": 60},
        {1: 12, 4: 3},
    )
    got = serve.server_time(before, after)
    assert got["inferences"] == 20 and got["executions"] == 5 and got["rows_per_execution"] == 4
    assert got["ms_per_request"] == pytest.approx(
        {"queue": 2.0, "compute_input": 0.1, "compute_infer": 50.0, "compute_output": 2.0}
    )
    assert got["execution_rows"] == {"1": 2, "4": 3}
    assert serve.server_time(after, after)["ms_per_request"] is None


def fake_statistics(self) -> dict:
    fake_statistics.calls += 1  # each reading: 4 more inferences in 2 executions, 10 ms each phase
    n = fake_statistics.calls
    return stats(4 * n, 2 * n, {p: 40.0 * n for p in ZERO}, {2: 2 * n})


fake_statistics.calls = 0


def test_main_writes_the_table_and_json(tmp_path: Path, monkeypatch, capsys) -> None:
    seen = []

    def answer(self, prompt, seed, duration_s=None, mono=False):
        seen.append((self.url, prompt, duration_s, mono))
        time.sleep(SLEEP_S)
        return np.zeros((1, 800), np.float32), 1000

    monkeypatch.setattr(Client, "generate", answer)
    monkeypatch.setattr(Client, "metadata", lambda self: {"server": {"version": "2.51"}})
    monkeypatch.setattr(Client, "statistics", fake_statistics)
    monkeypatch.setattr(serve, "read_gpu_memory", fake_memory)
    out = tmp_path / "r.json"
    # one process: the patched Client exists only in this one
    argv = ["--url", "h:8000", "--concurrency", "2", "--processes", "1", "--duration-s", "0.2"]
    argv += ["--warmup-s", "0"]
    assert serve.main([*argv, "--audio-s", "0.8", "--mono", "--json", str(out), "-q"]) == 0
    doc = json.loads(out.read_text())
    stdout = capsys.readouterr().out
    assert json.loads(stdout.strip().splitlines()[-1]) == doc
    assert "latency ms" in stdout and "GPU memory MiB  start 3584, end 3584" in stdout
    assert doc["metrics_url"] == "h:8002" and doc["server"] == {"server": {"version": "2.51"}}
    assert doc["gpu_memory"]["start"]["used_mib"] == pytest.approx(3584)
    assert doc["command"][-1] == "-q" and doc["config"]["concurrency"] == 2 == doc["concurrency"]
    assert doc["processes"] == 1
    assert doc["ok"] == doc["requests"] > 0 and doc["throughput_audio_s_per_s"] > 0
    assert set(seen) == {("h:8000", "warm lofi piano", 0.8, True)}
    assert doc["server_time"]["ms_per_request"] == pytest.approx(dict.fromkeys(ZERO, 10.0))
    assert "server ms/req   queue 10.0, input 10.0, infer 10.0, output 10.0" in stdout


def test_main_exits_1_when_every_request_fails(tmp_path: Path, monkeypatch, capsys) -> None:
    def refuse(self, *args, **kwargs):
        raise ServerError("duration_s=99.0 is outside every bucket")

    monkeypatch.setattr(Client, "generate", refuse)
    monkeypatch.setattr(Client, "metadata", lambda self: {})
    monkeypatch.setattr(Client, "statistics", fake_statistics)
    monkeypatch.setattr(serve, "read_gpu_memory", fake_memory)
    argv = ["--url", "h:8000", "--concurrency", "2", "--processes", "1", "--duration-s", "0.1"]
    argv += ["--audio-s", "99"]
    assert serve.main([*argv, "--json", str(tmp_path / "r.json")]) == 1
    assert "error: duration_s=99.0 is outside every bucket" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("flags", "code"),
    [
        (["--url", "h", "--concurrency", "1", "--duration-s", "1"], 1),
        (["--url", "h:1", "--concurrency", "0", "--duration-s", "1"], 2),
        (["--url", "h:1", "--concurrency", "1", "--duration-s", "0"], 2),
        (["--url", "h:1", "--concurrency", "1", "--duration-s", "1", "--metrics-url", "m"], 1),
    ],
)
def test_main_refuses_bad_flags_before_any_request(monkeypatch, flags, code) -> None:
    def never(self, *args, **kwargs):
        raise AssertionError("no request may be sent")

    monkeypatch.setattr(Client, "generate", never)
    monkeypatch.setattr(Client, "metadata", never)
    if code == 2:
        with pytest.raises(SystemExit) as exit_:
            serve.main(flags)
        assert exit_.value.code == 2
    else:
        assert serve.main(flags) == 1
