"""Generate music from a build folder's engines (made by `python -m export.build`).

examples:
  python -m runtime.generate "warm lofi piano" --engines artifacts/tiny -o out.wav
  python -m runtime.generate "driving techno" --engines artifacts/presto-ls --backend torch \\
      --device cuda --bpm 128 --duration-s 32 --num-takes 4 --seed 7 -o take.wav
  python -m runtime.generate "ambient pads" --engines artifacts/tiny --mono --no-cuda-graph -o pads.wav
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from runtime._cli import add_logging_flags, log, run_main, setup_logging
from runtime.errors import InputError
from runtime.pipeline import Pipeline


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", help="text prompt describing the music")
    p.add_argument("--engines", type=Path, required=True, metavar="DIR", help="build folder")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="PATH",
        help="WAV path; with --num-takes N > 1, PATH_0.wav ... PATH_{N-1}.wav",
    )
    p.add_argument("--bpm", type=float, default=120.0, help="beats per minute (default 120)")
    p.add_argument(
        "--duration-s",
        type=float,
        default=None,
        metavar="S",
        help="seconds, rounded to whole 960-sample frames (default: the longest built bucket)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first take (default 0)")
    p.add_argument(
        "--num-takes",
        type=int,
        default=1,
        metavar="N",
        help="takes in one batch, seeds seed..seed+N-1 (default 1)",
    )
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the build's)")
    p.add_argument(
        "--rho", type=float, default=None, help="Karras schedule rho >= 1 (default: the build's)"
    )
    p.add_argument("--mono", action="store_true", help="skip the mono-to-stereo model")
    p.add_argument("--width", type=float, default=1.0, help="stereo width (default 1)")
    p.add_argument(
        "--backend", choices=("auto", "tensorrt", "onnxruntime", "torch"), default="auto"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-cuda-graph", action="store_true", help="run the chain uncaptured on CUDA")
    p.add_argument(
        "--float-wav", action="store_true", help="write 32-bit float instead of 16-bit PCM"
    )
    add_logging_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging(args)

    def body() -> list[Path]:
        if args.num_takes < 1:
            raise InputError(f"--num-takes={args.num_takes} must be >= 1")
        if not args.output.parent.is_dir():
            raise InputError(f"output folder {args.output.parent} does not exist; create it first")
        start = time.perf_counter()
        pipe = Pipeline(
            args.engines,
            backend=args.backend,
            device=args.device,
            cuda_graph=not args.no_cuda_graph,
        )
        log.info(
            "loaded %s (%s on %s) in %.1f s",
            args.engines,
            pipe.backend,
            pipe.device,
            time.perf_counter() - start,
        )
        seeds = list(range(args.seed, args.seed + args.num_takes))
        start = time.perf_counter()
        audio = pipe.generate(
            [args.prompt] * args.num_takes,
            seeds=seeds,
            bpm=args.bpm,
            duration_s=args.duration_s,
            num_steps=args.steps,
            rho=args.rho,
            stereo=not args.mono,
            width=args.width,
        )
        log.info(
            "generated %d x %.2f s in %.2f s",
            args.num_takes,
            audio.duration_s,
            time.perf_counter() - start,
        )
        if args.num_takes == 1:
            paths = [args.output]
        else:
            stem, suffix = args.output.stem, args.output.suffix or ".wav"
            paths = [args.output.with_name(f"{stem}_{i}{suffix}") for i in range(args.num_takes)]
        tmp = [p.with_name(f".{p.name}.partial") for p in paths]
        try:
            for i, t in enumerate(tmp):
                audio.write_wav(t, take=i, subtype="FLOAT" if args.float_wav else "PCM_16")
            for t, p in zip(tmp, paths):
                t.replace(p)
        finally:
            for t in tmp:
                t.unlink(missing_ok=True)
        return paths

    return run_main(body, argv, {"engines": args.engines, "backend": args.backend})


if __name__ == "__main__":
    raise SystemExit(main())
