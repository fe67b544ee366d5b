"""Generate music from a build folder's engines (made by `python -m export.build`).

examples:
  python -m runtime.generate "warm lofi piano" --engines artifacts/tiny -o out.wav
  python -m runtime.generate "driving techno" --engines artifacts/presto-ls --backend torch \\
      --device cuda --bpm 128 --duration-s 32 --num-takes 4 --seed 7 -o take.wav
  python -m runtime.generate "ambient pads" --engines artifacts/tiny --mono --no-cuda-graph -o pads.wav
  python -m runtime.generate "string quartet" --engines artifacts/presto-l --cfg 0.6 -o q.wav

--cfg (the CFG++ lambda) applies to builds whose manifest samples with dpmpp-2s. --num-takes N runs
in the batch sizes built at the duration (e.g. 5 takes on batches 1,2 as 2 + 2 + 1); each take is
the same as when generated alone. N is refused up front when its audio would not fit in memory.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from presto_common.cli import (
    add_logging_flags,
    add_request_flags,
    check_device,
    check_outputs,
    check_request_flags,
    host_available_bytes,
    run_main,
    setup_logging,
    take_paths,
    write_wavs,
)
from presto_common.errors import InputError
from runtime.pipeline import Pipeline

log = logging.getLogger("runtime.generate")

# Full-size float32 copies of the takes' audio held at once: the result, and the one write_wavs
# makes (peak-normalised, or |x| to count clipped samples).
AUDIO_COPIES = 2


def check_host_memory(num_takes: int, channels: int, num_samples: int, sample_rate: int) -> None:
    """InputError when num_takes takes of (channels, num_samples) float32 audio would not fit in
    the host's free memory (the engines run a bucket at a time; the audio of all takes is kept)."""
    free = host_available_bytes()
    if free is None:
        log.warning("free host memory unknown; --num-takes %d is not checked", num_takes)
        return
    per_take = AUDIO_COPIES * channels * num_samples * 4
    if num_takes * per_take > free:
        fits = free // per_take
        fix = f"ask for at most --num-takes {fits}" if fits else "ask for a shorter --duration-s"
        raise InputError(
            f"--num-takes {num_takes} needs about {num_takes * per_take / 2**30:.1f} GiB of host "
            f"memory for its audio ({per_take / 2**20:.1f} MiB per take of "
            f"{num_samples / sample_rate:.2f} s), but {free / 2**30:.1f} GiB is free; {fix}"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_request_flags(p, default_duration="the longest built bucket")
    p.add_argument("--engines", type=Path, required=True, metavar="DIR", help="build folder")
    p.add_argument(
        "--backend", choices=("auto", "tensorrt", "onnxruntime", "torch"), default="auto"
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)"
    )
    p.add_argument("--no-cuda-graph", action="store_true", help="run the chain uncaptured on CUDA")
    add_logging_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging(args)

    def body() -> list[Path]:
        # Check the flags before loading engines; never write into the build folder being read.
        check_request_flags(args, forbidden_dir=args.engines)
        if args.device is not None:
            check_device(args.device)
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
        # A duration no batch was built for, or more takes than memory holds: refuse before -o.
        frames = pipe.frames_for(args.duration_s)
        channels = 1 if args.mono else 2
        num_samples = frames * pipe.manifest.hop_length
        check_host_memory(args.num_takes, channels, num_samples, pipe.manifest.sample_rate)
        paths = take_paths(args.output, args.num_takes)
        check_outputs(paths, forbidden_dir=args.engines)  # no take's name is a folder
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
            cfg_scale=args.cfg,
        )
        log.info(
            "generated %d x %.2f s in %.2f s",
            args.num_takes,
            audio.duration_s,
            time.perf_counter() - start,
        )
        write_wavs(
            paths,
            audio.samples,
            audio.sample_rate,
            float_wav=args.float_wav,
            normalize=args.normalize,
        )
        return paths

    return run_main(body, argv, {"engines": args.engines, "backend": args.backend})


if __name__ == "__main__":
    raise SystemExit(main())
