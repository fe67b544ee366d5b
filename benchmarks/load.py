"""The closed loop of `benchmarks.serve`: N workers sending requests back to back, and its summary.

Workers are threads, spread over `processes` client processes. One Python process parses every
response under one interpreter lock: 32 threads each taking 11 MB answers (32 s of stereo float32)
share one core's worth of parsing, and that core, not the server, becomes the ceiling (two H200s
served no more at concurrency 32 than at 8 with one process). With processes > 1 each process
drives its share of the threads from its own clients; all of them count against one window.

Times are time.monotonic() seconds, which on Linux is one clock for every process of the host.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import pickle
import queue
import statistics
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks.measure import percentile
from presto_common.errors import ServerError

log = logging.getLogger("benchmarks.serve")

MAX_ERROR_MESSAGES = 5  # distinct error messages kept in the report
STARTUP_TIMEOUT_S = 120.0  # client processes import tritonclient and numpy before the load starts
RESULT_TIMEOUT_S = 600.0  # after the window: the last request's timeout and the records' transfer
Record = tuple[float, float, float, "str | None"]  # start, end (s), audio seconds, error message


def run_load(
    make_client: Callable[[], Any],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 5.0,
    prompt: str = "warm lofi piano",
    audio_s: float | None = None,
    mono: bool = False,
    processes: int = 1,
) -> dict[str, Any]:
    """Drive `concurrency` workers, each with its own make_client(), for warmup_s then duration_s
    seconds; the counts, latencies (ms) and throughputs of the requests started in the window.

    A client needs generate(prompt, seed, duration_s=, mono=) -> (audio (C, T), sample_rate Hz),
    raising ServerError for a failed request, and may have close(). A probe request goes first
    and its ServerError is raised: a load of refused requests measures nothing. Any other
    exception in a worker stops the load and is raised here. processes > 1 spreads the workers
    over that many spawned processes; make_client must then be picklable (e.g. a
    functools.partial of runtime.Client).
    """
    request = (prompt, audio_s, mono)
    probe = make_client()
    try:
        if (error := _request(probe, request, 0)[1]) is not None:
            raise ServerError(error)
    finally:
        _close(probe)

    processes = max(1, min(processes, concurrency))
    log.info(
        "load: %d workers in %d process(es), %g s warm-up then %g s measured",
        concurrency,
        processes,
        warmup_s,
        duration_s,
    )
    if processes == 1:
        start = time.monotonic()
        records = _drive(
            make_client, concurrency, request, itertools.count(1), start, warmup_s + duration_s
        )
    else:
        start, records = _drive_processes(
            make_client, concurrency, request, processes, warmup_s + duration_s
        )
    return summarize_load(records, start + warmup_s, duration_s, concurrency, warmup_s)


def _request(client: Any, request: tuple, seed: int) -> tuple[float, str | None]:
    """One request: (seconds of audio, None) or (0, the error message)."""
    prompt, audio_s, mono = request
    try:
        audio, sample_rate = client.generate(prompt, seed, duration_s=audio_s, mono=mono)
    except ServerError as err:
        return 0.0, str(err)
    return audio.shape[-1] / sample_rate, None


def _drive(
    make_client: Callable[[], Any],
    threads: int,
    request: tuple,
    seeds: itertools.count,
    start: float,
    run_s: float,
    stop: Any = None,
) -> list[Record]:
    """`threads` workers in this process, sending until start + run_s; their records. The first
    exception of any worker sets `stop` (a threading or multiprocessing Event, shared by every
    client process; a new one by default), which ends every worker, and is raised."""
    seed_lock, stop = threading.Lock(), stop or threading.Event()
    records: list[Record] = []
    failures: list[BaseException] = []
    end = start + run_s

    def worker() -> None:
        try:
            client = make_client()
            try:
                while not stop.is_set() and (t := time.monotonic()) < end:
                    with seed_lock:
                        seed = next(seeds)
                    seconds, error = _request(client, request, seed)
                    records.append((t, time.monotonic(), seconds, error))  # append is atomic
            finally:
                _close(client)
        except BaseException as err:  # a bug or a bad client: stop everyone, raise it in run_load
            failures.append(err)
            stop.set()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    try:
        for thread in pool:
            thread.join()
    finally:
        stop.set()
    if failures:
        raise failures[0]
    return records


def _drive_processes(
    make_client: Callable[[], Any], concurrency: int, request: tuple, processes: int, run_s: float
) -> tuple[float, list[Record]]:
    """The workers spread over `processes` spawned processes that start together; (start, records).
    The first failure in any of them stops them all and is raised here."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds client threads
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    ready, go = ctx.Barrier(processes + 1), ctx.Barrier(processes + 1)
    start_at, stop, results = ctx.Value("d", 0.0), ctx.Event(), ctx.Queue()
    children = [
        ctx.Process(
            target=_child,
            args=(
                make_client,
                share,
                request,
                i,
                processes,
                run_s,
                ready,
                go,
                start_at,
                stop,
                results,
            ),
            daemon=True,
        )
        for i, share in enumerate(shares)
    ]
    outcomes = []
    try:
        for child in children:
            child.start()
        try:
            ready.wait(timeout=STARTUP_TIMEOUT_S)  # every child has imported and is waiting
            start_at.value = time.monotonic()
            go.wait(timeout=STARTUP_TIMEOUT_S)
        except threading.BrokenBarrierError:
            raise RuntimeError(
                f"the client processes did not start within {STARTUP_TIMEOUT_S:g} s (exit codes "
                f"{[c.exitcode for c in children]}); run with --processes 1 to see the error here"
            ) from None
        for _ in children:
            try:
                outcomes.append(results.get(timeout=run_s + RESULT_TIMEOUT_S))
            except queue.Empty:
                raise RuntimeError(
                    f"a client process sent no result {RESULT_TIMEOUT_S:g} s after the load ended "
                    f"(exit codes {[c.exitcode for c in children]}); run with --processes 1"
                ) from None
    finally:
        stop.set()
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    records: list[Record] = []
    for kind, value in outcomes:
        if kind == "error":
            raise value
        records += value
    return start_at.value, records


def _child(make_client, threads, request, index, processes, run_s, ready, go, start_at, stop, out):
    """One client process: its threads' records, or the exception that stopped them, on `out`."""
    try:
        ready.wait()
        go.wait()
        seeds = itertools.count(1 + index, processes)  # every process its own seeds
        out.put(
            ("records", _drive(make_client, threads, request, seeds, start_at.value, run_s, stop))
        )
    except BaseException as err:  # sent to the parent, which raises it
        stop.set()
        try:
            pickle.dumps(err)
        except Exception:  # an exception that cannot cross processes: its traceback can
            err = RuntimeError(f"in a client process:\n{traceback.format_exc()}")
        out.put(("error", err))


def _close(client: Any) -> None:
    if hasattr(client, "close"):
        client.close()


def summarize_load(
    records: list[Record],
    window_start: float,
    duration_s: float,
    concurrency: int,
    warmup_s: float,
) -> dict[str, Any]:
    """The report of the requests (start, end, audio_s, error) that started in the window
    [window_start, window_start + duration_s); earlier ones count as warm-up. Times in seconds."""
    counted = [r for r in records if window_start <= r[0] < window_start + duration_s]
    ok = [r for r in counted if r[3] is None]
    failed = Counter(r[3] for r in counted if r[3] is not None)
    wall_s = max([window_start + duration_s] + [r[1] for r in counted]) - window_start
    latencies = sorted((end - begin) * 1e3 for begin, end, _, _ in ok)
    audio_s = sum(r[2] for r in ok)
    return {
        "concurrency": concurrency,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "wall_s": wall_s,
        "requests": len(counted),
        "ok": len(ok),
        "errors": sum(failed.values()),
        "error_messages": [
            {"message": m, "count": n} for m, n in list(failed.items())[:MAX_ERROR_MESSAGES]
        ],
        "latency_ms": None
        if not latencies
        else {
            "p50": percentile(latencies, 0.5),
            "p90": percentile(latencies, 0.9),
            "p99": percentile(latencies, 0.99),
            "min": latencies[0],
            "max": latencies[-1],
            "mean": statistics.fmean(latencies),
        },
        "audio_s_per_request": audio_s / len(ok) if ok else None,
        "throughput_audio_s_per_s": audio_s / wall_s,
        "requests_per_s": len(ok) / wall_s,
        "warmup_requests": len([r for r in records if r[0] < window_start]),
        # every counted request in start order: [start s after the window opened, latency ms, ok];
        # a tail that recurs (every k-th request, every few seconds) shows here, not in p99
        "timeline": [
            [round(begin - window_start, 4), round((end - begin) * 1e3, 3), error is None]
            for begin, end, _, error in sorted(counted, key=lambda r: r[0])
        ],
    }
