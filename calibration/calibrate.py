"""Calibrate the DiT for FP8 or INT8 on the reference sampler's own trajectories.

Runs the model's sampler (ping-pong for Presto-LS) on the shipped calibration prompts and seeds,
records the DiT's inputs at every step, and calibrates each layer budget's DiT on the steps that use
it (ModelOpt: SmoothQuant alpha 0.5 for int8, max calibration for fp8). Writes DIR/scales.safetensors
(per budget and Linear layer: input amax, weight amax, and for int8 the smoothing factors and the
per-channel input amax; per block, the ranges of its attention's q, k, v and output, for FP8
attention) and DIR/calibration.json (a readable summary with the scales' sha256).
`python -m export.build --quantization int8 --calibration DIR` builds engines from it
(`export.quant_onnx.export_quantized_dit` writes one budget's Q/DQ ONNX graph).

examples:
  python -m calibration.calibrate --preset tiny --precision int8 --duration-s 1 -o artifacts/calib-tiny
  python -m calibration.calibrate --preset presto-ls --precision fp8 --device cuda -o artifacts/calib-fp8
  python -m calibration.calibrate --checkpoint ckpt/ --precision int8 --prompts my.txt -o calib/
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from calibration.attention_ranges import attention_ranges
from calibration.recipes import (
    SMOOTHQUANT_ALPHA,
    calibrate_budget,
    import_modelopt,
    modelopt_version,
)
from calibration.trajectories import (
    PROMPTS_FILE,
    calibration_bpms,
    group_by_budget,
    read_prompts,
    record_dit_calls,
)
from export.quant_scales import (
    Calibration,
    check_out_dir,
    describe_layers,
    read_summary,
    save_calibration,
)
from presto_common.cli import add_logging_flags, check_device, run_main, setup_logging
from presto_common.errors import ConfigError, InputError
from presto_common.names import QUANTIZATIONS, TOOLKIT_VERSION
from presto_common.schedule import karras_sigmas
from presto_ref.checkpoint import load_checkpoint, random_model
from presto_ref.presets import PRESETS

log = logging.getLogger(__name__)

# Each prompt's takes run as one batch of --seeds rows, so the count bounds the batch's memory (a
# typo such as 10**9 would otherwise fail deep in the sampler); more data means more prompts.
MAX_SEEDS = 256


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m calibration.calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--preset", metavar="NAME", help=f"random-init preset, one of {sorted(PRESETS)}"
    )
    src.add_argument("--checkpoint", type=Path, metavar="DIR", help="checkpoint directory")
    p.add_argument("--precision", required=True, choices=QUANTIZATIONS, help="target format")
    p.add_argument(
        "--duration-s",
        type=float,
        metavar="S",
        help="seconds of audio per take, rounded to whole frames (default: the model's maximum)",
    )
    p.add_argument(
        "--prompts",
        type=Path,
        default=PROMPTS_FILE,
        metavar="FILE",
        help="text file, one prompt a line (default: the shipped calibration/prompts.txt)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=2,
        metavar="N",
        help="takes per prompt, seeds 0..N-1 (default 2)",
    )
    p.add_argument(
        "--init-seed", type=int, default=0, help="seed of the random init without --checkpoint"
    )
    p.add_argument(
        "--device", default="cpu", help="cpu, cuda or cuda:N: where the sampler and ModelOpt run"
    )
    p.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="output folder")
    add_logging_flags(p)
    return p


def check_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """Flag errors before any model is loaded; each names the value and the fix. Returns the
    prompts."""
    if not 1 <= args.seeds <= MAX_SEEDS:
        raise InputError(
            f"--seeds {args.seeds} is outside [1, {MAX_SEEDS}] (takes per prompt, one batch); "
            "e.g. --seeds 2"
        )
    if args.duration_s is not None and not args.duration_s > 0:
        raise InputError(f"--duration-s {args.duration_s} must be a positive number of seconds")
    if args.preset is not None and args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    check_device(args.device)
    check_out_dir(args.out)
    if args.out.is_dir() and any(args.out.iterdir()):
        read_summary(args.out)  # only an earlier calibration may be replaced
    prompts = read_prompts(args.prompts)
    import_modelopt()  # fail before the sampler runs
    return prompts


def calibrate(args: argparse.Namespace, prompts: tuple[str, ...]) -> Path:
    """Steps 1-4 of the command; returns the output folder."""
    # 1. The model and the calibration set.
    if args.checkpoint is not None:
        model = load_checkpoint(args.checkpoint, device=args.device)
        source = {"checkpoint": str(args.checkpoint)}
    else:
        model = random_model(args.preset, seed=args.init_seed).to(args.device).eval()
        source = {"preset": args.preset, "init_seed": args.init_seed}
    config = model.config
    seeds = tuple(range(args.seeds))
    duration_s = config.max_duration_s if args.duration_s is None else args.duration_s
    # 2. The sampler's own trajectories: every DiT input, tagged with its step's budget.
    calls = record_dit_calls(model, prompts, seeds, duration_s)
    by_budget = group_by_budget(calls)
    log.info("recorded %d DiT calls over budgets %s", len(calls), sorted(by_budget))
    # 3. One calibration per budget.
    budgets, attention = {}, {}
    for budget, group in by_budget.items():
        budgets[budget] = calibrate_budget(model.denoiser, group, args.precision)
        attention[budget] = attention_ranges(model.denoiser, group)
        log.info(
            "budget %d: %d Linear layers and %d attentions calibrated",
            budget,
            len(budgets[budget]),
            len(attention[budget]),
        )
    # 4. The folder.
    sampler = config.sampler
    schedule = karras_sigmas(
        sampler.num_steps, config.edm.sigma_min, config.edm.sigma_max, sampler.rho
    )
    summary = {
        "model": config.name,
        **source,
        "recipe": (
            f"SmoothQuant alpha {SMOOTHQUANT_ALPHA}, int8 per-tensor inputs, per-channel weights"
            if args.precision == "int8"
            else "fp8 E4M3 max calibration, per-tensor inputs and weights"
        ),
        "prompts": list(prompts),
        "bpms": list(calibration_bpms(config.bpm_range, len(prompts))),
        "seeds": list(seeds),
        "duration_s": duration_s,
        "frames": config.frames_for_duration(duration_s),
        "sampler": sampler.kind,
        "schedule_sigmas": schedule,
        "schedule_budgets": [sampler.budgets.budget_for_sigma(s) for s in schedule],
        "budgets": {
            str(b): {
                "num_calls": len(group),
                "sigmas": sorted({round(float(c.sigma[0]), 6) for c in group}, reverse=True),
                "layers": describe_layers(budgets[b]),
                "attention": describe_layers(attention[b]),
            }
            for b, group in by_budget.items()
        },
        "tools": {
            "presto-trt": TOOLKIT_VERSION,
            "modelopt": modelopt_version(),
            "torch": torch.__version__,
        },
    }
    calibration = Calibration(args.precision, config.config_hash(), budgets, attention)
    return save_calibration(args.out, calibration, summary)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging(args)

    def body() -> list[Path]:
        out = calibrate(args, check_flags(args))
        doc = read_summary(out)
        print(
            json.dumps(
                {
                    "out": str(out),
                    "precision": doc["precision"],
                    "budgets": [int(b) for b in doc["budgets"]],
                    "scales_sha256": doc["scales_sha256"],
                }
            )
        )
        return [out]

    return run_main(
        body, argv, {"precision": args.precision, "device": args.device, "out": args.out}
    )


if __name__ == "__main__":
    raise SystemExit(main())
