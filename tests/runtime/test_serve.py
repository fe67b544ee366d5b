"""The real server: `python -m runtime.serve` (Triton Inference Server, the tiny ONNX build on the
CPU), driven by `runtime.Client`, `runtime.client` and `benchmarks.serve`.

One server runs for the module (start-up is about 10 s); the SIGTERM test runs last and stops it.
Triton runs here: glibc 2.36 >= the 2.35 the nvidia-pytriton wheel needs; it logs that it finds no
CUDA driver, NVML or DCGM, which is expected without a GPU.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from presto_common.errors import BackendUnavailable, ServerError
from runtime import Client, Pipeline, Take
from runtime.triton_repo import TritonDist

# Two runs of the same take on ONNX Runtime CPU in fp32 at batch 1 and packed at batch 2 differ by
# float reassociation only (tests/runtime/test_packing.py measures it); the server adds no maths.
RTOL = 1e-4


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_server(build, log_path, *extra: str):
    """`python -m runtime.serve` on `build` on the CPU, once ready: (process, http, grpc, metrics
    urls). Skips where Triton is not installed; fails with the server's log if it does not start."""
    try:
        TritonDist.find()
    except BackendUnavailable as err:
        pytest.skip(f"Triton Inference Server is not installed here: {err}")
    http, grpc, metrics = _free_ports(3)
    command = [
        sys.executable, "-m", "runtime.serve", "--engines", str(build), "--cpu",
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), *extra,
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        Client(f"127.0.0.1:{http}").wait_ready(240)
    except ServerError:
        process.kill()
        pytest.fail(f"the server did not start:\n{log_path.read_text()[-4000:]}")
    return process, *(f"127.0.0.1:{port}" for port in (http, grpc, metrics))


@pytest.fixture(scope="module")
def served(build, tmp_path_factory):
    """(process, http url, grpc url, metrics url, log path) of a server on the tiny build."""
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    extra = ("--max-batch", "32", "--max-queue-delay-ms", "20", "--exit-timeout-s", "60")
    extra += ("--timings-log", str(log_path.parent / "timings.jsonl"))
    process, http, grpc, metrics = _start_server(build, log_path, *extra)
    yield process, http, grpc, metrics, log_path
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def local(build):
    return Pipeline(build, backend="onnxruntime", device="cpu")


def _close(a: np.ndarray, b: np.ndarray) -> None:
    rel = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert a.shape == b.shape and rel < RTOL, (a.shape, b.shape, rel)


def test_concurrent_requests_equal_runtime_generate(served, local):
    _, http, grpc, _, _ = served
    requests = [  # (protocol, seed, bpm, width, mono)
        ("http", 0, 120.0, 1.0, False),
        ("grpc", 1, 90.0, 0.5, False),
        ("http", 2, 150.0, 1.0, True),
        ("grpc", 3, 120.0, 2.0, False),
        ("http", 4, 60.0, 1.0, False),
        ("http", 5, 120.0, 1.0, True),
    ]
    results: dict[int, tuple[np.ndarray, int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(requests))

    def send(protocol: str, seed: int, bpm: float, width: float, mono: bool) -> None:
        try:
            with Client(http if protocol == "http" else grpc, protocol=protocol) as client:
                barrier.wait()
                results[seed] = client.generate(
                    "warm lofi piano", seed=seed, bpm=bpm, width=width, mono=mono
                )
        except BaseException as err:  # re-raised in the test's thread below
            errors.append(err)

    threads = [threading.Thread(target=send, args=r) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for _, seed, bpm, width, mono in requests:
        audio, rate = results[seed]
        want = local.generate_takes([Take("warm lofi piano", seed, bpm, width)], stereo=not mono)
        assert rate == want.sample_rate
        _close(audio, want.samples[0])


def test_every_execution_is_timed_in_the_timings_log(served):
    """--timings-log: a JSON line per model execution, appended after the answer is built."""
    _, http, _, _, log_path = served
    timings = log_path.parent / "timings.jsonl"
    before = len(timings.read_text().splitlines()) if timings.exists() else 0
    with Client(http) as client:
        client.generate("warm lofi piano", seed=7, mono=True)
    lines = [json.loads(line) for line in timings.read_text().splitlines()]
    assert len(lines) == before + 1
    last = lines[-1]
    assert (last["device"], last["requests"], last["rows"]) == ("cpu", 1, 1)
    assert last["generate_ms"] > 0 and last["read_ms"] >= 0 and last["answer_ms"] >= 0
    # the collections that ran during the execution (runtime/gc_pauses.py), none needed
    assert len(last["gc_collections"]) == 3 and 0 <= last["gc_max_ms"] <= last["gc_ms"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shared_memory_output_equals_the_body(served, protocol):
    _, http, grpc, _, _ = served
    url = http if protocol == "http" else grpc
    with Client(url, protocol=protocol) as plain, Client(url, protocol, shared_memory_mib=1) as shm:
        want, rate = plain.generate("warm lofi piano", seed=9, mono=True)
        for _ in range(2):  # the region is reused: the second answer overwrites the first
            got, got_rate = shm.generate("warm lofi piano", seed=9, mono=True)
            np.testing.assert_array_equal(got, want)
        assert got_rate == rate
        stats = shm.statistics()
    assert stats["name"] == "presto" and int(stats["inference_count"]) >= 3


def test_a_too_small_region_is_a_server_error(served):
    _, http, _, _, _ = served
    with Client(http, shared_memory_mib=0.01) as client, pytest.raises(ServerError):
        client.generate("warm lofi piano", seed=1)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("bpm", 400.0, "bpm=400"),
        ("bpm", float("nan"), "bpm=nan"),
        ("prompt", "", "empty"),
        ("prompt", "x" * 5000, "at most 127 fit"),
        ("duration_s", 99.0, "duration_s=99"),
        ("width", 9.0, "width"),
    ],
)
def test_a_bad_request_is_refused_alone_and_the_next_is_served(served, field, value, message):
    _, http, _, _, _ = served
    good = {"prompt": "warm lofi piano", "seed": 3}
    with Client(http) as client:
        with pytest.raises(ServerError, match=re.escape(message)):
            client.generate(**{**good, field: value})
        audio, _ = client.generate(**good)
    assert audio.shape[0] == 2 and np.isfinite(audio).all()


def test_wrong_input_types_are_refused_by_triton(served):
    import tritonclient.http as httpclient

    _, http, _, _, _ = served
    client = httpclient.InferenceServerClient(http)
    prompt = httpclient.InferInput("prompt", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"warm lofi piano"]], dtype=object))
    seed = httpclient.InferInput("seed", [1, 1], "FP32")  # the model takes INT64
    seed.set_data_from_numpy(np.array([[1.0]], dtype=np.float32))
    with pytest.raises(Exception, match="seed"):
        client.infer("presto", [prompt, seed])


def test_client_cli_writes_the_take_or_nothing(served, local, tmp_path):
    import soundfile

    from runtime.client import main as client_main

    _, http, _, _, _ = served
    wav = tmp_path / "take.wav"
    assert (
        client_main(
            ["warm lofi piano", "--url", http, "--seed", "4", "--float-wav", "-o", str(wav)]
        )
        == 0
    )
    audio, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    want = local.generate_takes([Take("warm lofi piano", 4)])
    assert rate == want.sample_rate
    _close(audio.T, want.samples[0])
    bad = tmp_path / "bad.wav"
    assert client_main(["warm lofi piano", "--url", http, "--bpm", "1000", "-o", str(bad)]) == 1
    assert not bad.exists()


def test_load_benchmark_against_the_server(served, tmp_path):
    from benchmarks.serve import main as bench_main

    _, http, _, metrics, _ = served
    out = tmp_path / "load.json"
    argv = ["--url", http, "--concurrency", "3", "--duration-s", "3", "--warmup-s", "1"]
    argv += ["--shared-memory-mib", "1"]
    assert bench_main([*argv, "--metrics-url", metrics, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["ok"] == report["requests"] > 0
    assert report["throughput_audio_s_per_s"] > 0 and report["latency_ms"]["p99"] > 0
    # a CPU server exports no GPU memory lines: null, with the reason
    assert report["gpu_memory"]["start"]["used_mib"] is None
    assert report["gpu_memory"]["start"]["reason"]
    server = report["server_time"]  # Triton's own statistics over the run
    assert (
        server["inferences"] >= report["requests"] and server["ms_per_request"]["compute_infer"] > 0
    )


def test_a_second_server_on_the_same_host_serves_beside_the_first(served, build, local, tmp_path):
    """One server per GPU on one host (scripts/serve_round.sh's split step): both answer, each
    correctly. (It passed with and without server_command's shared-memory prefix.)"""
    _, first, _, _, _ = served
    second, http, _, _ = _start_server(build, tmp_path / "second.log")
    try:
        with Client(first) as a, Client(http) as b:
            for seed, client in [(7, a), (8, b), (9, a), (10, b)]:
                audio, _ = client.generate("warm lofi piano", seed=seed)
                want = local.generate_takes([Take("warm lofi piano", seed)], stereo=True)
                _close(audio, want.samples[0])
    finally:
        second.terminate()
        second.wait(120)


def test_sigterm_finishes_the_request_in_flight_then_exits(served):
    process, http, _, _, log_path = served
    # Three requests of 32 rows (16 packed runs at batch 2 each), sent at once: the model instance
    # runs them one after another, so when SIGTERM comes 0.3 s later at least two are queued or
    # running. (One such request alone outlasted a 1 s wait until ONNX Runtime stopped spinning.)
    rows, requests = 32, 3
    done: list[dict] = [{} for _ in range(requests)]

    def send(slot: dict) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(http, network_timeout=120)
        prompt = httpclient.InferInput("prompt", [rows, 1], "BYTES")
        prompt.set_data_from_numpy(np.array([[b"warm lofi piano"]] * rows, dtype=object))
        seed = httpclient.InferInput("seed", [rows, 1], "INT64")
        seed.set_data_from_numpy(np.arange(rows, dtype=np.int64)[:, None])
        try:
            slot["audio"] = client.infer("presto", [prompt, seed]).as_numpy("audio")
        except Exception as err:  # asserted below
            slot["error"] = err
        slot["at"] = time.monotonic()

    threads = [threading.Thread(target=send, args=(slot,)) for slot in done]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # the requests have arrived; the first is running
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(120)
    assert process.wait(120) == 0, log_path.read_text()[-3000:]
    for slot in done:
        assert "error" not in slot, slot.get("error")
        assert slot["audio"].shape[:2] == (rows, 2)
    assert sum(slot["at"] > signalled for slot in done) >= 2, "no request was in flight at SIGTERM"
    workspace = re.search(r"--model-repository=(\S+)/models", log_path.read_text())
    assert workspace and not os.path.exists(workspace.group(1))
    assert Path(workspace.group(1)).name.startswith("presto-serve-")


def test_a_killed_launcher_takes_the_server_with_it(build, tmp_path):
    """SIGKILL of `runtime.serve` (no chance to clean up): tritonserver gets SIGTERM and exits."""
    log_path = tmp_path / "server.log"
    launcher, http, _, _ = _start_server(build, log_path)
    launcher.kill()
    launcher.wait()
    client = Client(http, timeout_s=5)
    deadline = time.monotonic() + 90  # Triton's shutdown: unload the model, stop the services
    while client.is_ready() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not client.is_ready(), log_path.read_text()[-2000:]
