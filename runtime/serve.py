"""Serve a build folder behind Triton Inference Server (HTTP and gRPC, KServe v2 protocol).

examples:
  python -m runtime.serve --engines artifacts/presto-ls                 # every GPU, ports 8000-8002
  python -m runtime.serve --engines artifacts/presto-ls --gpus 0,1 --max-queue-delay-ms 5
  python -m runtime.serve --engines artifacts/tiny --http-port 9000 --grpc-port 9001 \\
      --metrics-port 9002                                                  # CPU where no GPU
  python -m runtime.client "warm lofi piano" --url localhost:8000 -o take.wav

One model, `presto`: inputs prompt (BYTES), seed (INT64), and the optional bpm, duration_s, width
(FP32) and mono (BOOL), each (n, 1); outputs audio (n, C, T) FP32 and sample_rate (n, 1) INT32.
Triton's dynamic batcher gathers concurrent requests; the model packs them into the build's batch
buckets. One model instance (one Pipeline) per GPU. Every bucket's CUDA graph is captured before
the server reports ready (GET /v2/health/ready). Prometheus metrics at :METRICS_PORT/metrics.
SIGTERM or Ctrl-C: Triton stops taking requests, finishes those in flight, and the server exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from presto_common.cli import add_logging_flags, check_writable_folder, run_main, setup_logging
from presto_common.errors import InputError, OutputError, ServerError
from runtime.catalog import Catalog
from runtime.manifest import Manifest
from runtime.remote import Client
from runtime.triton_repo import (
    MODEL_NAME,
    ModelSettings,
    TritonDist,
    write_backends,
    write_repository,
)

log = logging.getLogger("runtime.serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--engines", type=Path, required=True, metavar="DIR", help="build folder")
    p.add_argument(
        "--backend", choices=("auto", "tensorrt", "onnxruntime", "torch"), default="auto"
    )
    p.add_argument(
        "--gpus",
        default=None,
        metavar="LIST",
        help="GPU indices, one replica each, e.g. 0,1 (default: every GPU; the CPU if none)",
    )
    p.add_argument("--cpu", action="store_true", help="serve on the CPU even where GPUs exist")
    p.add_argument("--http-port", type=int, default=8000, metavar="P", help="default 8000")
    p.add_argument("--grpc-port", type=int, default=8001, metavar="P", help="default 8001")
    p.add_argument("--metrics-port", type=int, default=8002, metavar="P", help="default 8002")
    p.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=2.0,
        metavar="MS",
        help="how long the batcher waits to fill a bucket (default 2)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        metavar="N",
        help="rows per model call at most (default: the largest built batch)",
    )
    p.add_argument("--no-cuda-graph", action="store_true", help="run the chain uncaptured on CUDA")
    p.add_argument(
        "--timings-log",
        type=Path,
        metavar="PATH",
        help="append one JSON line per model execution: GPU, rows, the milliseconds spent "
        "reading the requests, generating (the chain and the copy to the host) and answering, and "
        "the garbage collections that ran meanwhile (count per generation, pause ms)",
    )
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the start-up heap in Python's garbage collector (default: frozen out after the "
        "warm-up, so that a full collection does not walk torch's objects mid-request)",
    )
    p.add_argument(
        "--ready-timeout-s",
        type=float,
        default=900.0,
        metavar="S",
        help="give up if not ready (engines loaded, graphs captured) in S s (default 900)",
    )
    p.add_argument(
        "--exit-timeout-s",
        type=int,
        default=60,
        metavar="S",
        help="on SIGTERM, wait at most S s for requests in flight (default 60)",
    )
    add_logging_flags(p)
    return p


def _gpus(args: argparse.Namespace) -> tuple[int, ...]:
    """The GPU indices to serve on; () for the CPU."""
    if args.cpu:
        if args.gpus:
            raise InputError(f"--cpu and --gpus {args.gpus} contradict; pass one of them")
        return ()
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.gpus is None:
        return tuple(range(count))
    try:
        gpus = tuple(int(g) for g in args.gpus.split(","))
    except ValueError:
        raise InputError(
            f"--gpus {args.gpus!r} is not a list of GPU indices; e.g. --gpus 0,1"
        ) from None
    bad = [g for g in gpus if not 0 <= g < count]
    if bad:
        have = f"GPUs 0..{count - 1}" if count else "no CUDA GPU"
        raise InputError(
            f"--gpus {args.gpus} names {bad}, but this machine has {have}; "
            + ("pass indices in that range" if count else "serve on the CPU with --cpu")
        )
    if len(set(gpus)) != len(gpus):
        raise InputError(f"--gpus {args.gpus} names a GPU twice; name each once")
    return gpus


def _check_ports(args: argparse.Namespace) -> None:
    ports = {"--http-port": args.http_port, "--grpc-port": args.grpc_port}
    ports["--metrics-port"] = args.metrics_port
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise InputError(f"{flag} {port} is not a TCP port; pass one in 1..65535")
    if len(set(ports.values())) < 3:
        raise InputError(f"the ports {ports} must differ; pass three different ports")


def settings_for(args: argparse.Namespace) -> ModelSettings:
    """Check the flags and the build (without loading engines) and return the model's settings."""
    _check_ports(args)
    if args.max_queue_delay_ms < 0:
        raise InputError(f"--max-queue-delay-ms {args.max_queue_delay_ms} must be >= 0")
    gpus = _gpus(args)
    if args.timings_log is not None:
        if args.timings_log.is_dir():
            raise OutputError(
                f"--timings-log {args.timings_log} is a folder; give a file such as "
                f"{args.timings_log / 'timings.jsonl'}"
            )
        check_writable_folder(args.timings_log.resolve().parent, "--timings-log")
    import torch

    device = torch.device("cuda:0" if gpus else "cpu")
    folder = args.engines.resolve()
    catalog = Catalog(folder, Manifest.load(folder), device, args.backend)
    batches = tuple(catalog.built_batches())
    if not batches:
        raise ServerError(f"{folder} has no complete bucket for {catalog.backend} on {device}")
    max_batch = args.max_batch or max(batches)
    if max_batch < 1:
        raise InputError(f"--max-batch {args.max_batch} must be >= 1")
    return ModelSettings(
        engines=folder,
        backend=args.backend,
        gpus=gpus,
        max_batch=max_batch,
        preferred_batches=batches,
        max_queue_delay_ms=args.max_queue_delay_ms,
        cuda_graph=not args.no_cuda_graph,
        timings_log=None if args.timings_log is None else args.timings_log.resolve(),
        gc_freeze=not args.no_gc_freeze,
    )


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when this process dies, however it dies (Linux
    prctl PR_SET_PDEATHSIG), so a killed `runtime.serve` never leaves a server holding the GPUs
    and ports. Elsewhere the child outlives a killed parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def server_command(server: Path, repo: Path, backends: Path, args: argparse.Namespace) -> list[str]:
    """The tritonserver command line for a model repository and backends folder.

    The Python backend's shared-memory regions (between the server and its stubs) get a prefix
    unique to this server, as the Python backend's documentation asks of several servers on one
    host ("Running Multiple Instances of Triton Server"). With the tritonserver of nvidia-pytriton
    0.7.0, two servers on one host also ran side by side without it (tests/runtime/test_serve.py),
    so this follows the documentation rather than a failure seen here.
    """
    return [
        str(server),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        f"--http-port={args.http_port}",
        f"--grpc-port={args.grpc_port}",
        f"--metrics-port={args.metrics_port}",
        f"--exit-timeout-secs={args.exit_timeout_s}",
        "--strict-readiness=true",
        f"--log-verbose={1 if args.verbose else 0}",
        f"--log-info={'false' if args.quiet else 'true'}",
        f"--backend-config=python,shm-region-prefix-name=presto{os.getpid()}-{os.urandom(4).hex()}",
        # each response is up to B x 2 x 1.4 M float32 (11 MB a take); grow the shared memory
        # between server and stub in large steps instead of 1 MB ones
        "--backend-config=python,shm-default-byte-size=67108864",
        "--backend-config=python,shm-growth-byte-size=67108864",
    ]


class Server:
    """A running `tritonserver` child with its generated workspace; `stop()` ends it gracefully."""

    def __init__(self, settings: ModelSettings, args: argparse.Namespace) -> None:
        self.settings, self.args = settings, args
        dist = TritonDist.find()
        self.workspace = Path(tempfile.mkdtemp(prefix="presto-serve-"))
        try:
            repo = write_repository(settings, self.workspace / "models")
            backends = write_backends(dist, self.workspace / "backends")
            command = server_command(dist.server, repo, backends, args)
            log.info("starting %s", " ".join(command))
            self.process = subprocess.Popen(
                command, env=dist.environment(dict(os.environ)), preexec_fn=_die_with_parent
            )
        except BaseException:
            shutil.rmtree(self.workspace, ignore_errors=True)
            raise

    def wait_ready(self) -> None:
        """Block until the model is ready; ServerError if the server exits or the time runs out."""
        deadline = time.monotonic() + self.args.ready_timeout_s
        with Client(f"127.0.0.1:{self.args.http_port}", timeout_s=2) as client:
            while not client.is_ready():
                code = self.process.poll()
                if code is not None:
                    raise ServerError(
                        f"tritonserver exited with code {code} before the {MODEL_NAME} model was "
                        "ready; its log above says why (a port in use, or the model failing to load)"
                    )
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"the {MODEL_NAME} model was not ready after --ready-timeout-s "
                        f"{self.args.ready_timeout_s:g}; raise it for large builds"
                    )
                time.sleep(0.5)

    def stop(self) -> int:
        """SIGTERM the server (it finishes the requests in flight), wait, remove the workspace."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            return self.process.wait(timeout=self.args.exit_timeout_s + 30)
        finally:
            shutil.rmtree(self.workspace, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging(args)

    def body() -> list[Path]:
        settings = settings_for(args)
        stopping = []

        def on_signal(signum: int, _frame) -> None:
            stopping.append(signum)
            log.info("%s: finishing the requests in flight, then exiting", signal.strsignal(signum))
            server.process.send_signal(signal.SIGTERM)

        server = Server(settings, args)
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            start = time.perf_counter()
            server.wait_ready()
            where = f"GPUs {','.join(map(str, settings.gpus))}" if settings.gpus else "the CPU"
            log.info(
                "ready in %.1f s: %s on %s, batches %s; http :%d, grpc :%d, metrics :%d",
                time.perf_counter() - start,
                MODEL_NAME,
                where,
                list(settings.preferred_batches),
                args.http_port,
                args.grpc_port,
                args.metrics_port,
            )
            code = server.process.wait()
            if code != 0 and not stopping:
                raise ServerError(f"tritonserver exited with code {code}; its log above says why")
            if code != 0:
                log.warning("tritonserver exited with code %d while stopping", code)
            return []
        finally:
            server.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    return run_main(body, argv, {"engines": args.engines, "backend": args.backend})


if __name__ == "__main__":
    raise SystemExit(main())
