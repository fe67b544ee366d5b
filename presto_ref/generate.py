"""Generate music with the eager PyTorch reference model.

Writes 44.1 kHz WAV files (stereo unless --mono). With no --checkpoint, the preset's seeded random
weights are used: the audio is then noise-like, but every component runs exactly as a trained one would.

examples:
  python -m presto_ref.generate "lofi hip hop with warm piano" -o out.wav --preset tiny
  python -m presto_ref.generate "ambient pads" -o take.wav --preset tiny --num-takes 3 --seed 7
  python -m presto_ref.generate "driving techno" -o out.wav --checkpoint ckpt/ --bpm 128 \\
      --duration-s 32 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from presto_common.cli import (
    add_logging_flags,
    add_request_flags,
    run_main,
    setup_logging,
    take_paths,
    write_wavs,
)
from presto_common.errors import InputError, NumericalError
from presto_common.names import PRECISIONS, torch_dtype
from presto_ref.checkpoint import load_checkpoint, random_model, read_config
from presto_ref.pipeline import Request, validate_request
from presto_ref.presets import DEFAULT_PRESET, PRESETS, get_preset
from presto_ref.text import ByteTokenizer

log = logging.getLogger("presto_ref.generate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m presto_ref.generate",
        description=__doc__,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(
            prog, max_help_position=32
        ),
    )
    add_request_flags(p, default_duration="the model's max")
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "--preset",
        metavar="NAME",
        help=f"random-init preset {sorted(PRESETS)} (default {DEFAULT_PRESET})",
    )
    model.add_argument("--checkpoint", type=Path, metavar="DIR", help="checkpoint directory")
    p.add_argument(
        "--sampler",
        choices=("ping-pong", "dpmpp-2s"),
        default=None,
        help="ping-pong for distilled models, dpmpp-2s (with CFG++) for the base model",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument(
        "--dtype", choices=PRECISIONS, default="fp32", help="weights dtype (default fp32)"
    )
    p.add_argument(
        "--init-seed", type=int, default=0, help="seed of the random init without --checkpoint"
    )
    add_logging_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging(args)

    def body() -> list[Path]:
        # 1. Resolve the config and check the whole request before loading any weights.
        config = (
            read_config(args.checkpoint)
            if args.checkpoint
            else get_preset(args.preset or DEFAULT_PRESET)
        )
        if args.num_takes < 1:
            raise InputError(f"--num-takes={args.num_takes} must be >= 1")
        duration_s = config.max_duration_s if args.duration_s is None else args.duration_s
        request = Request(
            prompts=(args.prompt,) * args.num_takes,
            seeds=tuple(range(args.seed, args.seed + args.num_takes)),
            bpm=args.bpm,
            duration_s=duration_s,
            num_steps=args.steps,
            rho=args.rho,
            cfg_scale=args.cfg,
            sampler=args.sampler,
            stereo=not args.mono,
            width=args.width,
        )
        sampler = validate_request(config, request)
        ByteTokenizer(config.text.max_tokens).encode([args.prompt])  # empty / overlong prompt
        paths = take_paths(args.output, args.num_takes)
        if not args.output.parent.is_dir():
            raise InputError(f"output folder {args.output.parent} does not exist; create it first")
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(
                f"--device {args.device} asked for, but CUDA is not available; use --device cpu"
            )
        num_frames = config.frames_for_duration(duration_s)
        log.info(
            "%s: %d frames = %.3f s, sampler %s, %d steps, rho %g",
            config.name,
            num_frames,
            config.duration_for_frames(num_frames),
            sampler.kind,
            sampler.num_steps,
            sampler.rho,
        )

        # 2. Load or initialise the model.
        if args.checkpoint:
            model = load_checkpoint(args.checkpoint, device=device, dtype=torch_dtype(args.dtype))
        else:
            model = (
                random_model(config, args.init_seed)
                .to(device=device, dtype=torch_dtype(args.dtype))
                .eval()
            )

        # 3. Generate, check, then write every take (nothing is written if any take is bad).
        audio = model.generate(request, on_step=lambda i, n: log.info("step %d/%d", i, n))
        audio = audio.cpu().numpy()
        for i, take in enumerate(audio):
            if not np.isfinite(take).all():
                raise NumericalError(
                    f"take {i} (seed {request.seeds[i]}) holds NaN or Inf; try --dtype fp32"
                )
        write_wavs(
            paths, audio, config.sample_rate, float_wav=args.float_wav, normalize=args.normalize
        )
        return paths

    resolved = {k: v for k, v in vars(args).items() if k not in ("verbose", "quiet")}
    return run_main(body, argv, resolved)


if __name__ == "__main__":
    raise SystemExit(main())
