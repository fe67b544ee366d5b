"""Closed-loop load test of a running `python -m runtime.serve` server.

--concurrency N workers, each with its own runtime.Client, send requests back to back (one take
each, a new seed every request) for --duration-s seconds, after one probe request and --warmup-s
seconds of the same load that are not counted. The workers are threads spread over --processes
client processes (benchmarks/load.py says why one process cannot load a large server). A request
counts when it starts inside the measured window; every counted request is waited for, so the
measured wall time runs from the window's start to the last counted answer.

Reported: latency p50/p90/p99 (ms, nearest rank, successful requests only), requests, errors (count
and the first distinct messages), throughput in seconds of audio per wall second and in successful
requests per second, and the GPU memory the server uses at the start and the end (the sum over GPUs
of Triton's nv_gpu_memory_used_bytes, in MiB, from --metrics-url; null with the reason when the
page has no GPU lines, as on a CPU server). A refused probe, or a run whose every request failed,
exits 1.

The last stdout line is one JSON document; --json PATH writes it too:
    {command, config, started_at, finished_at, server: {server, model}, metrics_url,
     gpu_memory: {start, end}, environment, processes, concurrency, duration_s, warmup_s, wall_s,
     requests, ok, errors, error_messages, latency_ms: {p50, p90, p99, min, max, mean},
     audio_s_per_request, throughput_audio_s_per_s, requests_per_s, warmup_requests,
     timeline: [[start s, latency ms, ok], ...], server_time: {inferences, executions,
     rows_per_execution, execution_rows, ms_per_request: {queue, compute_input, compute_infer,
     compute_output}}}

server_time comes from Triton's statistics extension, read before and after the run (warm-up
included): per request, the milliseconds queued, copying inputs, computing (the whole chain and the
copy of the audio to the host) and returning outputs. --shared-memory-mib has each client register
a system shared-memory region for `audio` (server and client on one host), so the audio does not
travel in the response body.

examples:
  python -m benchmarks.serve --url localhost:8000 --concurrency 4 --duration-s 60
  python -m benchmarks.serve --url gpu-box:8001 --protocol grpc --concurrency 16 --duration-s 120 \\
      --audio-s 10 --mono --warmup-s 10 --json serve.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from benchmarks.environment import host_environment
from benchmarks.load import run_load
from benchmarks.measure import MIB
from benchmarks.report import write_json
from presto_common.cli import add_logging_flags, check_json_output, run_main, setup_logging
from presto_common.errors import ServerError
from runtime import Client

log = logging.getLogger("benchmarks.serve")

METRICS_PORT = 8002  # Triton's default metrics port, as `python -m runtime.serve` uses
GPU_USED, GPU_TOTAL = "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"
# One Prometheus text sample: name, optional {labels}, value (an optional timestamp follows).
_SAMPLE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


# --- GPU memory from the metrics endpoint ---------------------------------------------------------


def gpu_memory(text: str) -> dict[str, Any]:
    """GPU memory in a Prometheus text page: used and total MiB summed over GPUs, and the count.

    used_mib is None, with the reason, where the page has no nv_gpu_memory_used_bytes sample.
    """
    sums = {GPU_USED: 0.0, GPU_TOTAL: 0.0}
    counts = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and match[1] in sums:
            sums[match[1]] += float(match[3])
            counts[match[1]] += 1
    if not counts[GPU_USED]:
        return {
            "used_mib": None,
            "total_mib": None,
            "gpus": 0,
            "reason": f"the metrics have no {GPU_USED} lines (a server without GPUs, or "
            "its GPU metrics are off)",
        }
    return {
        "used_mib": sums[GPU_USED] / MIB,
        "total_mib": sums[GPU_TOTAL] / MIB if counts[GPU_TOTAL] else None,
        "gpus": counts[GPU_USED],
        "reason": None,
    }


def read_gpu_memory(metrics_url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """gpu_memory of http://metrics_url/metrics; used_mib None, with the reason, if unreachable."""
    address = f"http://{metrics_url}/metrics"
    try:
        with urllib.request.urlopen(address, timeout=timeout_s) as page:
            return gpu_memory(page.read().decode("utf-8", errors="replace"))
    except (urllib.error.URLError, OSError) as err:
        reason = f"{address} could not be read ({getattr(err, 'reason', err)}); pass --metrics-url"
        log.warning("GPU memory not reported: %s", reason)
        return {"used_mib": None, "total_mib": None, "gpus": 0, "reason": reason}


# --- where the server spent the time: Triton's own statistics ---------------------------------------

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def _ns(stats: dict[str, Any], phase: str) -> int:
    return int(stats["inference_stats"][phase]["ns"])


def server_time(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-request milliseconds in each phase inside the server between two `Client.statistics()`
    readings, with the model executions and the rows each held; the client's latency minus their
    sum is the transport (request and response bodies, the client's parsing)."""
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    if inferences <= 0:
        return {"inferences": 0, "executions": executions, "ms_per_request": None}
    ms = {p: (_ns(after, p) - _ns(before, p)) / 1e6 / inferences for p in PHASES}
    sizes = Counter()
    for batch in after.get("batch_stats", []):
        sizes[int(batch["batch_size"])] += int(batch["compute_infer"]["count"])
    for batch in before.get("batch_stats", []):
        sizes[int(batch["batch_size"])] -= int(batch["compute_infer"]["count"])
    return {
        "inferences": inferences,
        "executions": executions,
        "rows_per_execution": inferences / executions if executions else None,
        "execution_rows": {str(k): v for k, v in sorted(sizes.items()) if v},
        "ms_per_request": ms,
    }


def format_table(doc: dict[str, Any]) -> str:
    """The readable summary of benchmarks.serve's JSON document."""

    def memory(m: dict[str, Any]) -> str:
        return "n/a" if m["used_mib"] is None else f"{m['used_mib']:.0f}"

    cfg, lat = doc["config"], doc["latency_ms"]
    lines = [
        f"presto at {cfg['url']} ({cfg['protocol']}): concurrency {doc['concurrency']}, "
        f"{doc['duration_s']:g} s after {doc['warmup_s']:g} s warm-up "
        f"({doc['warmup_requests']} warm-up requests, not counted)",
        f"{'requests':<16}{doc['requests']} ({doc['ok']} ok, {doc['errors']} errors) in "
        f"{doc['wall_s']:.2f} s: {doc['requests_per_s']:.2f} ok requests/s",
    ]
    if doc["audio_s_per_request"] is not None:
        lines.append(
            f"{'audio':<16}{doc['audio_s_per_request']:.2f} s per request, "
            f"{doc['throughput_audio_s_per_s']:.2f} audio s per wall s"
        )
    if lat is not None:
        lines.append(
            f"{'latency ms':<16}p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}"
            f"  (min {lat['min']:.1f}, max {lat['max']:.1f})"
        )
    start, end = doc["gpu_memory"]["start"], doc["gpu_memory"]["end"]
    line = f"{'GPU memory MiB':<16}start {memory(start)}, end {memory(end)}"
    lines.append(line + (f" ({end['reason']})" if end["used_mib"] is None else ""))
    server = doc.get("server_time") or {}
    if server.get("ms_per_request"):
        ms = server["ms_per_request"]
        lines.append(
            f"{'server ms/req':<16}queue {ms['queue']:.1f}, input {ms['compute_input']:.1f}, "
            f"infer {ms['compute_infer']:.1f}, output {ms['compute_output']:.1f}; "
            f"{server['executions']} executions of {server['rows_per_execution']:.1f} rows"
        )
    for e in doc["error_messages"]:
        lines.append(f"{'error':<16}{e['count']}x {e['message']}")
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--url", required=True, metavar="HOST:PORT", help="the server's HTTP or gRPC port")
    add("--protocol", choices=("http", "grpc"), default="http", help="(default: http)")
    add("--concurrency", type=int, required=True, metavar="N", help="workers, >= 1")
    add(
        "--processes",
        type=int,
        metavar="P",
        help="client processes the workers are spread over (default: min(N, CPU cores))",
    )
    add("--duration-s", type=float, required=True, metavar="T", help="seconds of measured load")
    add("--warmup-s", type=float, default=5.0, metavar="W", help="uncounted load first (default 5)")
    add("--prompt", default="warm lofi piano", help="the prompt of every request")
    add("--audio-s", type=float, metavar="S", help="audio seconds per request (default: server's)")
    add("--mono", action="store_true", help="ask for mono takes")
    add("--metrics-url", metavar="HOST:PORT", help="Triton metrics (default: --url's host:8002)")
    add("--timeout-s", type=float, default=120.0, metavar="T", help="per request (default 120)")
    add(
        "--shared-memory-mib",
        type=float,
        default=0.0,
        metavar="MIB",
        help="audio through a shared-memory region of MIB per client (same host; 11 holds 32 s "
        "stereo); default 0: in the response body",
    )
    add("--json", type=Path, metavar="PATH", help="also write the JSON document here")
    add_logging_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = build_parser()
    args = p.parse_args(argv)
    if args.concurrency < 1:
        p.error(f"--concurrency {args.concurrency} must be >= 1")
    if args.processes is not None and args.processes < 1:
        p.error(f"--processes {args.processes} must be >= 1")
    # no more processes than workers: the JSON records what ran
    processes = min(args.processes or os.cpu_count() or 1, args.concurrency)
    if not args.duration_s > 0 or not args.warmup_s >= 0 or not args.timeout_s > 0:
        p.error("--duration-s and --timeout-s must be > 0 seconds, --warmup-s >= 0")
    setup_logging(args)

    def body() -> list[Path]:
        # 1. Everything that can be refused before any load: --json, the urls, the server.
        if args.json is not None:
            check_json_output(args.json)
        client = Client(args.url, protocol=args.protocol, timeout_s=args.timeout_s)
        metrics_url = args.metrics_url or f"{client.host}:{METRICS_PORT}"
        Client.split_url(metrics_url, "--metrics-url")
        with client:
            server = client.metadata()
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        memory_start = read_gpu_memory(metrics_url)

        # a partial, not a closure: client processes unpickle it to make their clients
        make_client = functools.partial(
            Client,
            args.url,
            protocol=args.protocol,
            timeout_s=args.timeout_s,
            shared_memory_mib=args.shared_memory_mib,
        )

        # 2. The load (server statistics around it), then the memory the server holds after it.
        with Client(args.url, protocol=args.protocol, timeout_s=args.timeout_s) as stats:
            before = stats.statistics()
        result = run_load(
            make_client,
            args.concurrency,
            args.duration_s,
            args.warmup_s,
            args.prompt,
            args.audio_s,
            args.mono,
            processes,
        )
        with Client(args.url, protocol=args.protocol, timeout_s=args.timeout_s) as stats:
            after = stats.statistics()
        memory_end = read_gpu_memory(metrics_url)
        doc = {
            "command": ["python", "-m", "benchmarks.serve", *argv],
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "started_at": started_at,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "server": server,
            "metrics_url": metrics_url,
            "gpu_memory": {"start": memory_start, "end": memory_end},
            "environment": {
                **host_environment(),
                "tritonclient": package_metadata.version("tritonclient"),
            },
            "processes": processes,
            **result,
            # over the whole run, warm-up included: the server cannot tell the two apart
            "server_time": server_time(before, after),
        }
        # 3. The table, the JSON; a run in which no request succeeded is a failure.
        print(format_table(doc))
        if args.json is not None:
            write_json(args.json, doc)
        print(json.dumps(doc))
        if not result["ok"]:
            first = result["error_messages"][0]["message"] if result["errors"] else None
            raise ServerError(
                f"all {result['requests']} requests in the window failed; the first said: {first}"
                if first
                else f"no request started in the {args.duration_s:g} s window (each worker was "
                "still on its warm-up request); lengthen --duration-s past one request's latency"
            )
        return [args.json] if args.json else []

    return run_main(body, argv, {"url": args.url, "protocol": args.protocol})


if __name__ == "__main__":
    raise SystemExit(main())
