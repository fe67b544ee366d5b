"""Do the GPUs of one host slow each other, and what does a copy of generated audio to the host cost?

The same workloads run in one process on GPU 0 alone, then in one process per GPU started together
(synchronised on a wall-clock instant), each printing one JSON line:

    mm_ms                       a bf16 8192^3 matmul (compute-bound), mean of 200
    graph_4000_kernels_ms       a CUDA graph of 4000 elementwise kernels on 1M floats, mean of 50
    <size> <copy>               copies of a take's audio (11 MiB: 32 s stereo float32) and of a
                                batch-8 bucket's (90 MiB) to the host, means of 10: into a fresh
                                pageable tensor (`.cpu()`), a reused pageable one, a reused pinned one,
                                and from pinned memory into a fresh or a reused numpy array; and
                                into a new tensor from torch's pinned-block cache

    noise <variant> b<B>        the noise of a presto-ls request of B takes (4 draws of (32, 1470)
                                per take), between simulated chains (the GPU sleeps 280 ms at
                                batch 8, 42 ms at batch 1, as the real chain takes): p50/p90/max ms
                                of the draws and their copy to the device, `stack+pageable` (each
                                draw stacked and copied on its own: the runtime before the fix)
                                against `pinned` (runtime.host_copy.PinnedUpload with
                                presto_common.noise.fill_draws)

    python scripts/two_gpu_probe.py                # on a machine with two GPUs; about 60 s
    python scripts/two_gpu_probe.py --gpus 0       # one GPU: only the alone run
    python scripts/two_gpu_probe.py --workloads noise

On the two-H200 machine (docs/measurements.md, "Two-H200 round") nothing but the fresh pageable
90 MiB copy changed with the other GPU busy (59 ms alone, 58-76 ms side by side); the next round's
phase probe found the request's noise draws growing from 13 to 290 ms, which `noise` reproduces.
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

from benchmarks.measure import percentile
from presto_common.noise import draw_noise, fill_draws, make_generators
from runtime.host_copy import PinnedUpload, copy_to_pinned

WORKLOADS = ("compute", "copies", "noise")
NOISE_ITEM = (32, 1470)  # presto-ls at 32 s: C_lat x T_lat
NOISE_DRAWS = 4  # ping-pong, 4 steps


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
    copy_to_pinned(src, torch.empty(n, pin_memory=True))  # the block, into torch's pinned cache
    wait_until(start_at)
    return {
        f"{mib} MiB into a fresh pageable tensor": mean_ms(src.cpu, 10),
        f"{mib} MiB into a reused pageable tensor": mean_ms(lambda: reused.copy_(src), 10),
        f"{mib} MiB into a reused pinned tensor": mean_ms(lambda: pinned.copy_(src), 10),
        f"{mib} MiB pinned -> fresh numpy": mean_ms(
            lambda: np.copyto(np.empty(n, np.float32), host), 10
        ),
        f"{mib} MiB pinned -> reused numpy": mean_ms(lambda: np.copyto(array, host), 10),
        # Pipeline.generate_takes(pinned=True): straight into a new tensor from torch's cache of
        # pinned blocks (runtime.host_copy.copy_to_pinned)
        f"{mib} MiB into a new tensor from the pinned cache": mean_ms(
            lambda: copy_to_pinned(src, torch.empty(n, pin_memory=True)), 10
        ),
    }


def noise(start_at: float) -> dict:
    """The two ways of drawing a request's noise and copying it up, between simulated chains."""
    device = torch.device("cuda")
    # clock_rate is in kHz: cycles per ms (1980 MHz on the H200 where torch does not report it)
    cycles_per_ms = getattr(torch.cuda.get_device_properties(device), "clock_rate", 1_980_000)
    out = {}
    # Each variant starts in its own slot (s after start_at), the same in every worker.
    slot = 0.0
    for batch, chain_ms, runs, slot_s in ((8, 280, 25, 16.0), (1, 42, 120, 10.0)):
        upload = PinnedUpload((NOISE_DRAWS, batch, *NOISE_ITEM), device)

        def stack_pageable(seeds: list[int]) -> list[torch.Tensor]:
            generators = make_generators(seeds)
            return [draw_noise(generators, NOISE_ITEM, device) for _ in range(NOISE_DRAWS)]

        def pinned(seeds: list[int], up: PinnedUpload = upload) -> torch.Tensor:
            return up.upload(lambda buf: fill_draws(seeds, buf))

        variants = {"stack+pageable": stack_pageable, "pinned": pinned}
        for name, draw in variants.items():
            draw(list(range(batch)))  # warm-up
            wait_until(start_at + slot)
            slot += slot_s
            times = []
            for i in range(runs):
                torch.cuda.synchronize()
                start = time.perf_counter()
                draw([i * batch + b for b in range(batch)])
                torch.cuda.synchronize()
                times.append((time.perf_counter() - start) * 1e3)
                torch.cuda._sleep(int(chain_ms * cycles_per_ms))  # the chain's GPU time
            times.sort()
            out[f"noise {name} b{batch}"] = {
                "p50": round(percentile(times, 0.5), 3),
                "p90": round(percentile(times, 0.9), 3),
                "max": round(times[-1], 3),
            }
    return out


def wait_until(instant: float) -> None:
    while time.time() < instant:
        time.sleep(0.001)


def worker(gpu: int, start_at: float, workloads: list[str]) -> None:
    torch.cuda.set_device(gpu)
    row = {"gpu": gpu}
    for name in workloads:
        row |= globals()[name](start_at)
        start_at = time.time() + 0.5
    print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpus", default="0,1", help="GPUs to load together after GPU 0 alone")
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, of {', '.join(WORKLOADS)} (default: all)",
    )
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown or not workloads:
        p.error(f"--workloads {args.workloads!r}: choose from {', '.join(WORKLOADS)}")
    if args.worker is not None:
        worker(args.worker, args.start_at, workloads)
        return 0
    if not torch.cuda.is_available():
        print("error: no CUDA GPU; run this on the GPU machine", file=sys.stderr)
        return 1
    gpus = [int(g) for g in args.gpus.split(",")]
    runs = [[gpus[0]]] + ([gpus] if len(gpus) > 1 else [])
    for run in runs:
        at = time.time() + 8  # every worker has imported torch and built its inputs by then
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(g), "--start-at", str(at)]
                + ["--workloads", ",".join(workloads)]
            )
            for g in run
        ]
        codes = [proc.wait() for proc in procs]
        print(json.dumps({"run": run, "exit_codes": codes}), flush=True)
        if any(codes):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
