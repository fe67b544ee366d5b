"""CLI helpers for `runtime` (a copy of presto_ref's: the runtime may not import presto_ref)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from runtime.errors import PrestoError

log = logging.getLogger("runtime")


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
    """Log the command, run `body`, print a PrestoError as one line with exit code 1, end with OK."""
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
