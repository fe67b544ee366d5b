"""benchmarks.measure on the CPU: the timer, run statistics and the launch counter.

python -m pytest tests/benchmarks/test_measure.py -q
"""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.measure import Timer, count_launches, summarize, time_fn


def test_timer_and_time_fn_on_the_cpu() -> None:
    timer = Timer(torch.device("cpu"))
    assert timer(lambda: time.sleep(0.01)) >= 10.0  # ms
    calls: list[int] = []
    row = time_fn(timer, calls.append, runs=3, warmup=2)
    assert calls == [0, 1, 2, 3, 4]  # every call numbered, warm-ups first
    assert row["runs"] == 3 and row["min_ms"] <= row["median_ms"] <= row["p90_ms"]


def test_summarize() -> None:
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert (s["median_ms"], s["p90_ms"], s["min_ms"], s["runs"]) == (2.5, 10.0, 1.0, 4)
    assert s["max_ms"] == 10.0 and s["times_ms"] == [3.0, 1.0, 2.0, 10.0]  # in run order
    assert s["cv"] == pytest.approx(4.0825 / 4.0, abs=1e-4)  # stdev / mean
    assert summarize([5.0])["cv"] == 0.0


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
