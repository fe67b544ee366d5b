"""Helpers shared by the `presto_ref` command-line tools: logging, the error wrapper, audio output.

`runtime` keeps its own copy of the first two so that `presto_ref` and `runtime` both stay leaves.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from presto_ref.errors import PrestoError

log = logging.getLogger("presto_ref")


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def run_main(body: Callable[[], list[Path]], argv: list[str], resolved: dict) -> int:
    """Run a CLI body: log the command and resolved settings, turn a PrestoError into one line and
    exit code 1, and end with OK or FAILED, the wall time and the output paths."""
    log.info("command: %s", json.dumps({"argv": argv, **resolved}, default=str))
    start = time.perf_counter()
    try:
        outputs = body()
    except PrestoError as err:
        print(f"error: {err}", file=sys.stderr)
        log.info("FAILED after %.1f s", time.perf_counter() - start)
        return 1
    log.info("OK in %.1f s: %s", time.perf_counter() - start, ", ".join(str(p) for p in outputs))
    return 0


def write_wavs(paths: list[Path], audio: np.ndarray, sample_rate: int, subtype: str) -> None:
    """Write takes audio: (N, C, T) float in [-1, 1] as WAVs through soundfile (PCM_16 or FLOAT).

    Each file is written under a temporary name and all are renamed at the end, so a failure leaves
    no partial WAV behind. The caller has checked that every take is finite.
    """
    import soundfile  # imported here: only the CLIs write files

    tmp_paths = [p.with_name(f".{p.name}.partial") for p in paths]
    try:
        for tmp, take in zip(tmp_paths, audio):
            soundfile.write(
                str(tmp), np.ascontiguousarray(take.T), sample_rate, subtype=subtype, format="WAV"
            )
        for tmp, path in zip(tmp_paths, paths):
            tmp.replace(path)
    finally:
        for tmp in tmp_paths:
            tmp.unlink(missing_ok=True)
