"""Ask a running `python -m runtime.serve` server for one take and write it as a WAV.

examples:
  python -m runtime.client "warm lofi piano" --url localhost:8000 -o out.wav
  python -m runtime.client "driving techno" --url localhost:8001 --protocol grpc \\
      --bpm 128 --duration-s 10 --seed 7 --normalize -o techno.wav
  python -m runtime.client "ambient pads" --url gpu-box:8000 --mono --float-wav -o pads.wav

The server judges the request (prompt, BPM, duration, width) and fills what is left out with its
defaults (120 BPM, its longest built duration, width 1); a refusal prints the server's one-line
message and exits 1, writing nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from presto_common.cli import (
    add_logging_flags,
    add_wav_flags,
    check_output,
    check_seeds,
    run_main,
    setup_logging,
    write_wavs,
)
from presto_common.errors import NumericalError
from runtime.remote import Client

log = logging.getLogger("runtime.client")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("prompt", help="text prompt describing the music")
    add("-o", "--output", required=True, type=Path, metavar="PATH", help=".wav path")
    add("--url", required=True, metavar="HOST:PORT", help="the server's HTTP or gRPC port")
    add("--protocol", choices=("http", "grpc"), default="http", help="(default: http)")
    add("--seed", type=int, default=0, help="noise seed (default 0)")
    add("--bpm", type=float, default=None, help="beats per minute (default: the server's, 120)")
    add(
        "--duration-s",
        type=float,
        default=None,
        metavar="S",
        help="seconds of audio (default: the server's, its longest built duration)",
    )
    add(
        "--width",
        type=float,
        default=None,
        help="stereo width in [0, 4] (default: the server's, 1)",
    )
    add("--mono", action="store_true", help="ask for mono; skip the mono-to-stereo model")
    add(
        "--timeout-s",
        type=float,
        default=120.0,
        metavar="T",
        help="seconds to wait for the server's answer (default 120)",
    )
    add_wav_flags(p)
    add_logging_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging(args)

    def body() -> list[Path]:
        # 1. What can be checked here, before the request: the output path and the seed's range.
        check_output(args.output)
        check_seeds(args.seed, 1)
        client = Client(args.url, protocol=args.protocol, timeout_s=args.timeout_s)
        # 2. One request; the server checks the rest and answers a refusal as a ServerError.
        start = time.perf_counter()
        with client:
            audio, sample_rate = client.generate(
                args.prompt,
                args.seed,
                bpm=args.bpm,
                duration_s=args.duration_s,
                width=args.width,
                mono=args.mono,
            )
        log.info(
            "%s answered %d channel(s) x %.2f s at %d Hz in %.2f s",
            client.url,
            audio.shape[0],
            audio.shape[1] / sample_rate,
            sample_rate,
            time.perf_counter() - start,
        )
        # 3. Only finite audio is written (write_wavs expects it).
        if bad := int(np.count_nonzero(~np.isfinite(audio))):
            raise NumericalError(
                f"the server at {client.url} returned {bad} NaN/Inf samples of {audio.size}; "
                "nothing written; check the server's engines (python -m runtime.generate)"
            )
        write_wavs(
            [args.output],
            audio[None],
            sample_rate,
            float_wav=args.float_wav,
            normalize=args.normalize,
        )
        return [args.output]

    return run_main(body, argv, {"url": args.url, "protocol": args.protocol})


if __name__ == "__main__":
    raise SystemExit(main())
