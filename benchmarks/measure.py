"""How the benchmarks measure: wall time, run statistics, roofline rates, peak memory, launches.

Wall time (ms) uses CUDA events on a GPU and perf_counter on the CPU (`Timer`, the one timer of
every benchmark). Peak memory (MiB) is read from torch's caching allocator, so it covers eager
tensors, AOTInductor buffers and TensorRT I/O buffers, but not memory a library allocates itself
(a TensorRT execution context's activations). Kernel launches are
counted from a torch.profiler trace of one call: CUDA runtime and driver launch API calls, graph
launches, and the kernels that ran on the GPU.
"""

from __future__ import annotations

import gc
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

MIB = 2**20
# Host-side API calls that launch one kernel each (CUDA runtime and driver API).
LAUNCH_APIS = frozenset(
    "cudaLaunchKernel cudaLaunchKernelExC cudaLaunchCooperativeKernel "
    "cuLaunchKernel cuLaunchKernelEx cuLaunchCooperativeKernel".split()
)
# Host-side API calls that launch a whole captured CUDA graph.
GRAPH_LAUNCH_APIS = frozenset({"cudaGraphLaunch", "cuGraphLaunch"})
# GPU-timeline events that are copies or fills, not kernels (profiler names "Memcpy HtoD ...").
NOT_KERNELS = ("Memcpy", "Memset")
# CUPTI can name an API by its versioned entry point, e.g. "cudaLaunchKernelExC_v11060".
_API_VERSION = re.compile(r"_v\d+$")


# --- timing ---------------------------------------------------------------------------------------


class Timer:
    """Wall time of a callable in ms: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def percentile(ordered: list[float], q: float) -> float:
    """The q-th quantile (0 < q <= 1) of a sorted list by nearest rank: a value that occurred.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def summarize(times_ms: list[float]) -> dict:
    """median, p90 (nearest rank), min, max and coefficient of variation of a list of times, and
    the times themselves in run order (a tail that recurs every k-th run shows there).

    >>> summarize([3.0, 1.0, 2.0])["median_ms"], summarize([3.0, 1.0, 2.0])["p90_ms"]
    (2.0, 3.0)
    """
    ordered = sorted(times_ms)
    mean = statistics.fmean(ordered)
    cv = statistics.stdev(ordered) / mean if len(ordered) > 1 and mean > 0 else 0.0
    return {
        "median_ms": statistics.median(ordered),
        "p90_ms": percentile(ordered, 0.9),
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "cv": cv,
        "runs": len(ordered),
        "times_ms": [round(t, 4) for t in times_ms],
    }


def time_fn(timer: Timer, fn: Callable[[int], Any], runs: int, warmup: int) -> dict[str, float]:
    """Call fn(i) warmup times untimed, then `runs` times timed; i counts every call."""
    for i in range(warmup):
        fn(i)
    return summarize([timer(lambda i=i: fn(warmup + i)) for i in range(runs)])


def measure_device(device: torch.device, timer: Timer) -> dict[str, float]:
    """Dense matmul rate (GFLOP/s) and copy bandwidth (GB/s, read + write) of this device."""
    if device.type == "cuda":
        n, dtype, copy_bytes, reps = 8192, torch.bfloat16, 1 << 30, 10
    else:
        n, dtype, copy_bytes, reps = 1024, torch.float32, 1 << 26, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up (library init, autotuning)
    mm_ms = min(timer(lambda: torch.mm(a, b)) for _ in range(reps))
    src = torch.empty(copy_bytes // 4, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_ms = min(timer(lambda: dst.copy_(src)) for _ in range(reps))
    return {
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "matmul_n": n,
        "matmul_gflops": 2 * n**3 / (mm_ms * 1e-3) / 1e9,
        "copy_gbps": 2 * copy_bytes / (copy_ms * 1e-3) / 1e9,
    }


# --- memory ---------------------------------------------------------------------------------------


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Peak allocator memory (MiB) of the block: absolute, and above what was allocated at its start.

    Yields a dict filled on exit with "peak_mib" and "peak_above_start_mib"; both None off CUDA.
    """
    out: dict[str, float | None] = {"peak_mib": None, "peak_above_start_mib": None}
    if device.type != "cuda":
        yield out
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    yield out
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    out["peak_mib"] = peak / MIB
    out["peak_above_start_mib"] = (peak - start) / MIB


def free_memory(device: torch.device) -> None:
    """Free what earlier work left: unreachable tensors, then the allocator's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def device_memory_used_mib(device: torch.device) -> float | None:
    """Memory in use on the whole GPU (any process, any allocator, the CUDA context), MiB."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) / MIB


# --- kernel launches ------------------------------------------------------------------------------


def count_launches(api_names: Iterable[str], gpu_names: Iterable[str]) -> dict[str, int]:
    """Count kernel launches in a profile, given its host-side event names and GPU event names.

    kernel_launch_calls: cudaLaunchKernel-like API calls (each launches one kernel from the host);
    graph_launches: cudaGraphLaunch calls (each replays a captured graph of many kernels);
    gpu_kernels: kernels that ran on the GPU, inside graphs or not (copies and fills excluded).

    >>> count_launches(["aten::mm", "cudaLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch"],
    ...                ["ampere_sgemm", "Memcpy HtoD (Pageable -> Device)", "triton_poi_0"])
    {'kernel_launch_calls': 2, 'graph_launches': 1, 'gpu_kernels': 2}
    """
    apis = [_API_VERSION.sub("", name) for name in api_names]
    return {
        "kernel_launch_calls": sum(name in LAUNCH_APIS for name in apis),
        "graph_launches": sum(name in GRAPH_LAUNCH_APIS for name in apis),
        "gpu_kernels": sum(not name.startswith(NOT_KERNELS) for name in gpu_names),
    }


def prepare_profiler(device: torch.device) -> None:
    """Start and stop the profiler once, before any CUDA graph is captured.

    Profiling the replay of a graph captured before the profiler's first use can fail or hang
    (pytorch/pytorch#75504); an empty profile first is the workaround PyTorch documents there.
    """
    if device.type != "cuda":
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]):
        pass


def kernel_launches(fn: Callable[[], Any], device: torch.device) -> dict[str, int] | None:
    """Run fn once under torch.profiler and count its launches (count_launches); None off CUDA."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    events = prof.events()
    return count_launches(
        [e.name for e in events if e.device_type == DeviceType.CPU],
        [e.name for e in events if e.device_type == DeviceType.CUDA],
    )
