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
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

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
from presto_common.errors import InputError, NumericalError
from presto_common.names import PRECISIONS, torch_dtype
from presto_ref.checkpoint import load_checkpoint, random_model, read_config
from presto_ref.config import PrestoConfig
from presto_ref.pipeline import Presto, Request, validate_request
from presto_ref.presets import DEFAULT_PRESET, PRESETS, get_preset
from presto_ref.text import ByteTokenizer

log = logging.getLogger("presto_ref.generate")

# A model this large takes minutes per generation on a CPU (presto-ls: 865 M parameters).
SLOW_ON_CPU_PARAMETERS = 100_000_000

# Copies of the decoders' widest activation that one take's peak memory is counted as. Measured
# on the tiny preset (5 s stereo fp32, CPU): peak RSS grew 62 MiB per take from 1 to 9 takes,
# about 18x its widest activation (residual inputs, conv outputs, the stereo model's parallel
# branches, allocator slack). 20 covers that with a margin. The larger presets are not measured and
# their estimate may be high, so a single take is only warned about; a batch is refused.
LIVE_ACTIVATIONS = 20


# --- Cost estimates, from the config alone (nothing is allocated)


def count_parameters(config: PrestoConfig) -> int:
    """Parameters of the whole model, counted on the meta device (no weights memory)."""
    with torch.device("meta"):
        model = Presto(config)
    return sum(p.numel() for p in model.parameters())


def bytes_per_take(config: PrestoConfig, num_frames: int, stereo: bool, element_size: int) -> int:
    """Estimated peak bytes one take adds to a batch: the VAE decoder's (or the mono-to-stereo
    model's) widest activation x LIVE_ACTIVATIONS, plus the latents and audio in float32.

    An estimate from the config, not a measurement (see LIVE_ACTIVATIONS)."""
    vae = config.vae
    widest = max(
        (vae.decoder_width >> k) * num_frames * math.prod(vae.decoder_strides[:k])
        for k in range(len(vae.decoder_strides) + 1)
    )
    num_samples = num_frames * config.hop_length
    if stereo:
        st = config.stereo
        mel_frames = num_samples // st.hop_length + 1
        widest = max(
            widest,
            *(
                (st.width >> k) * mel_frames * math.prod(st.upsample_rates[:k])
                for k in range(len(st.upsample_rates) + 1)
            ),
        )
    channels = 2 if stereo else 1
    return LIVE_ACTIVATIONS * widest * element_size + 4 * (
        config.vae.latent_channels * num_frames + (channels + 1) * num_samples
    )


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device`: MemAvailable on a CPU (Linux), free CUDA memory; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return host_available_bytes()


def check_memory(
    config: PrestoConfig,
    num_takes: int,
    num_frames: int,
    stereo: bool,
    num_parameters: int,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """InputError when the weights plus num_takes > 1 takes would not fit in `device`'s free
    memory (one take that might not fit gets a warning: the estimate may be high)."""
    free = available_bytes(device)
    if free is None:
        log.warning("free memory of %s unknown; --num-takes %d is not checked", device, num_takes)
        return
    element_size = torch.empty((), dtype=dtype, device="meta").element_size()
    per_take = bytes_per_take(config, num_frames, stereo, element_size)
    weights = num_parameters * element_size
    need = weights + num_takes * per_take
    if need > free and num_takes == 1:  # nothing smaller to suggest, and the estimate may be high
        log.warning(
            "one take of %.2f s may need about %.1f GiB on %s, but %.1f GiB is free; "
            "a shorter --duration-s or --preset tiny needs less",
            config.duration_for_frames(num_frames),
            need / 2**30,
            device,
            free / 2**30,
        )
    elif need > free:
        fits = max(0, (free - weights) // per_take)
        fix = (
            f"ask for at most --num-takes {fits}"
            if fits
            else "ask for a shorter --duration-s or a smaller --preset"
        )
        raise InputError(
            f"--num-takes {num_takes} needs about {need / 2**30:.1f} GiB "
            f"on {device} ({per_take / 2**20:.0f} MiB per take of "
            f"{config.duration_for_frames(num_frames):.2f} s, {weights / 2**30:.1f} GiB of weights), "
            f"but {free / 2**30:.1f} GiB is free; {fix}"
        )


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
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
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
        # 1. Check the flags, resolve the config and check the whole request before loading weights.
        check_request_flags(args)
        device = torch.device(check_device(args.device))
        preset = args.preset or DEFAULT_PRESET
        config = read_config(args.checkpoint) if args.checkpoint else get_preset(preset)
        duration_s = config.max_duration_s if args.duration_s is None else args.duration_s
        first = Request(  # take 0 alone: the checks below run before a batch is built
            prompts=(args.prompt,),
            seeds=(args.seed,),
            bpm=args.bpm,
            duration_s=duration_s,
            num_steps=args.steps,
            rho=args.rho,
            cfg_scale=args.cfg,
            sampler=args.sampler,
            stereo=not args.mono,
            width=args.width,
        )
        sampler = validate_request(config, first)
        ByteTokenizer(config.text.max_tokens).encode([args.prompt])  # empty / overlong prompt
        num_frames = config.frames_for_duration(duration_s)
        num_parameters = count_parameters(config)
        dtype = torch_dtype(args.dtype)
        check_memory(
            config, args.num_takes, num_frames, not args.mono, num_parameters, dtype, device
        )
        paths = take_paths(args.output, args.num_takes)
        check_outputs(paths)  # no take's name is a folder
        request = replace(
            first,
            prompts=(args.prompt,) * args.num_takes,
            seeds=tuple(range(args.seed, args.seed + args.num_takes)),
        )
        source = f"checkpoint {args.checkpoint}" if args.checkpoint else f"preset {preset}"
        cost = ""
        if device.type == "cpu" and num_parameters >= SLOW_ON_CPU_PARAMETERS:
            faster = "a CUDA device" if args.checkpoint else "--preset tiny for a quick check"
            cost = f"; a CPU run of a model this size takes minutes, use {faster}"
        log.info(
            "loading %s (%.0f M parameters) on %s%s", source, num_parameters / 1e6, device, cost
        )
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
            model = load_checkpoint(args.checkpoint, device=device, dtype=dtype)
        else:
            model = random_model(config, args.init_seed).to(device=device, dtype=dtype).eval()

        # 3. Generate, check, then write every take (nothing is written if any take is bad).
        def on_step(i: int, n: int) -> None:
            log.info("step %d/%d", i, n)
            if i == n:  # the sampling loop is done; decoding is the next long phase
                log.info(
                    "decoding %.2f s of %s audio for %d take(s) ...",
                    config.duration_for_frames(num_frames),
                    "mono" if args.mono else "stereo",
                    args.num_takes,
                )

        audio = model.generate(request, on_step=on_step)
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
