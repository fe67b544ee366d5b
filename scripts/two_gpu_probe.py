"""Do the GPUs of one host slow each other, and what does a copy of generated audio to the host cost?

The same workloads run in one process on GPU 0 alone, then in one process per GPU started together
(synchronised on a wall-clock instant), each printing one JSON line:

    mm_ms                       a bf16 8192^3 matmul (compute-bound), mean of 200
    graph_4000_kernels_ms       a CUDA graph of 4000 elementwise kernels on 1M floats, mean of 50
    <size> <copy>               copies of a take's audio (11 MiB: 32 s stereo float32) and of a
                                batch-8 bucket's (90 MiB) to the host, means of 10: into a fresh
                                pageable tensor (`.cpu()`), a reused pageable one, a reused pinned one,
                                and from pinned memory into a fresh or a reused numpy array

    python scripts/two_gpu_probe.py                # on a machine with two GPUs; about 30 s
    python scripts/two_gpu_probe.py --gpus 0       # one GPU: only the alone run

On the two-H200 machine (docs/measurements.md, "Two-H200 round") nothing but the fresh pageable
90 MiB copy changed with the other GPU busy (59 ms alone, 58-76 ms side by side).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch


def mean_ms(fn: Callable[[], object], reps: int) -> float:
    """Mean wall time of `reps` calls, the device synchronised around them."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - start) * 1e3 / reps, 3)


def compute(start_at: float) -> dict:
    """The compute-bound and launch-bound workloads, timed from `start_at` (time.time())."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    x = torch.randn(1 << 20, device="cuda")
    graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(side):  # warm-up before capture
        y = x * 1.0001 + 0.5
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        y = x
        for _ in range(2000):  # a multiply and an add each: 4000 kernels
            y = y * 1.0001 + 0.5
    torch.mm(a, b)
    graph.replay()
    wait_until(start_at)
    return {
        "mm_ms": mean_ms(lambda: torch.mm(a, b), 200),
        "graph_4000_kernels_ms": mean_ms(graph.replay, 50),
    }


def copies(start_at: float) -> dict:
    """Copies of 11 and 90 MiB of float32 to the host, timed from `start_at`."""
    out = {}
    for mib in (11, 90):
        out |= copies_of(mib, start_at)
        start_at = time.time() + 0.5
    return out


def copies_of(mib: int, start_at: float) -> dict:
    """The five copies of `mib` MiB, timed from `start_at`."""
    n = mib * 2**20 // 4
    src = torch.randn(n, device="cuda")
    reused = torch.empty(n)
    pinned = torch.empty(n, pin_memory=True)
    array = np.zeros(n, np.float32)
    for _ in range(2):  # fault in the reused buffers
        reused.copy_(src)
        pinned.copy_(src)
    host = pinned.numpy()
    wait_until(start_at)
    return {
        f"{mib} MiB into a fresh pageable tensor": mean_ms(src.cpu, 10),
        f"{mib} MiB into a reused pageable tensor": mean_ms(lambda: reused.copy_(src), 10),
        f"{mib} MiB into a reused pinned tensor": mean_ms(lambda: pinned.copy_(src), 10),
        f"{mib} MiB pinned -> fresh numpy": mean_ms(
            lambda: np.copyto(np.empty(n, np.float32), host), 10
        ),
        f"{mib} MiB pinned -> reused numpy": mean_ms(lambda: np.copyto(array, host), 10),
    }


def wait_until(instant: float) -> None:
    while time.time() < instant:
        time.sleep(0.001)


def worker(gpu: int, start_at: float) -> None:
    torch.cuda.set_device(gpu)
    row = {"gpu": gpu, **compute(start_at)}
    row |= copies(time.time() + 0.5)
    print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpus", default="0,1", help="GPUs to load together after GPU 0 alone")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.start_at)
        return 0
    if not torch.cuda.is_available():
        print("error: no CUDA GPU; run this on the GPU machine", file=sys.stderr)
        return 1
    gpus = [int(g) for g in args.gpus.split(",")]
    runs = [[gpus[0]]] + ([gpus] if len(gpus) > 1 else [])
    for run in runs:
        at = time.time() + 8  # every worker has imported torch and built its inputs by then
        procs = [
            subprocess.Popen([sys.executable, __file__, "--worker", str(g), "--start-at", str(at)])
            for g in run
        ]
        codes = [proc.wait() for proc in procs]
        print(json.dumps({"run": run, "exit_codes": codes}), flush=True)
        if any(codes):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
