"""Print a preset's parameter counts and FLOPs per component, built on the meta device (no memory).

FLOPs are counted by `presto_ref.flops.forward_flops` (torch.utils.flop_counter on shape-only
tensors) for one forward pass at the given duration: matmuls, convolutions and attention, 2 x
multiply-accumulates; elementwise work is not counted. Export writes the same counts into manifests.

examples:
  python -m presto_ref.describe
  python -m presto_ref.describe --preset presto-l --duration-s 10
  python -m presto_ref.describe --preset tiny --json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from presto_common.cli import run_main
from presto_ref.config import PrestoConfig
from presto_ref.flops import forward_flops
from presto_ref.presets import DEFAULT_PRESET, PRESETS, get_preset


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(config: PrestoConfig, duration_s: float) -> dict:
    """Parameters and forward FLOPs at batch 1 for each component of `config` (presto_ref.flops)."""
    from presto_ref.pipeline import Presto  # the model, built without weights memory

    with torch.device("meta"):
        model = Presto(config)
    frames = config.frames_for_duration(duration_s)
    modules = {
        "text_encoder": model.text_encoder,
        "dit": model.dit,
        "vae_decoder": model.vae.decoder,
        "vae_encoder": model.vae.encoder,
        "stereo": model.stereo,
    }
    return {
        "preset": config.name,
        "duration_s": config.duration_for_frames(frames),
        "frames": frames,
        "samples": frames * config.hop_length,
        "components": {
            name: {
                "parameters": count_parameters(module),
                "gflop": forward_flops(config, name, frames=frames) / 1e9,
            }
            for name, module in modules.items()
        },
        "dit_gflop_per_budget": {
            str(b): forward_flops(config, "dit", frames=frames, budget=b) / 1e9
            for b in config.sampler.budgets.distinct_budgets
        },
        "total_parameters": count_parameters(model),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        prog="python -m presto_ref.describe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"one of {sorted(PRESETS)}")
    p.add_argument(
        "--duration-s",
        type=float,
        default=None,
        help="audio length for the FLOP counts (default: the preset's maximum)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = p.parse_args(argv)

    def body() -> list:
        config = get_preset(args.preset)
        info = describe(config, args.duration_s or config.max_duration_s)
        if args.json:
            print(json.dumps(info, indent=2))
            return []
        print(
            f"{info['preset']}: {info['duration_s']:.3f} s = {info['frames']} frames = "
            f"{info['samples']:,} samples, batch 1"
        )
        print(f"{'component':<14}{'parameters':>16}{'GFLOP/forward':>16}")
        for name, row in info["components"].items():
            print(f"{name:<14}{row['parameters']:>16,}{row['gflop']:>16.1f}")
        print(f"{'total':<14}{info['total_parameters']:>16,}")
        budgets = ", ".join(f"b={b}: {g:.1f}" for b, g in info["dit_gflop_per_budget"].items())
        print(f"DiT GFLOP per budget: {budgets}")
        return []

    return run_main(body, argv, {"preset": args.preset})


if __name__ == "__main__":
    raise SystemExit(main())
