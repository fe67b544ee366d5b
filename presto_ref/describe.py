"""Print a preset's parameter counts and FLOPs per component, built on the meta device (no memory).

FLOPs are counted by torch.utils.flop_counter on shape-only tensors for one forward pass at the
given duration (matmuls, convolutions and attention; elementwise work is not counted).

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
from torch.utils.flop_counter import FlopCounterMode

from presto_common.cli import run_main
from presto_ref.config import PrestoConfig
from presto_ref.presets import DEFAULT_PRESET, PRESETS, get_preset


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(config: PrestoConfig, duration_s: float) -> dict:
    """Parameters and forward FLOPs at batch 1 for each component of `config`."""
    from presto_ref.pipeline import Presto  # the model, built without weights memory

    with torch.device("meta"):
        model = Presto(config)
    frames = config.frames_for_duration(duration_s)
    samples = frames * config.hop_length
    S, D_text = config.text.max_tokens, config.text.d_model

    def flops(fn) -> int:
        with torch.device("meta"), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    ids = torch.zeros(1, S, dtype=torch.long, device="meta")
    mask = torch.ones(1, S, dtype=torch.bool, device="meta")
    x = torch.zeros(1, config.dit.latent_channels, frames, device="meta")
    text = torch.zeros(1, S, D_text, device="meta")
    c_noise, bpm = torch.zeros(1, device="meta"), torch.zeros(1, device="meta")
    mono = torch.zeros(1, 1, samples, device="meta")

    rows = {
        "text_encoder": (model.text_encoder, lambda: model.text_encoder(ids, mask)),
        "dit": (model.dit, lambda: model.dit(x, c_noise, text, mask, bpm, budget=0)),
        "vae_decoder": (model.vae.decoder, lambda: model.vae.decoder(x)),
        "vae_encoder": (model.vae.encoder, lambda: model.vae.encoder(mono)),
        "stereo": (model.stereo, lambda: model.stereo(mono)),
    }
    out = {
        "preset": config.name,
        "duration_s": config.duration_for_frames(frames),
        "frames": frames,
        "samples": samples,
        "components": {},
    }
    for name, (module, fn) in rows.items():
        out["components"][name] = {"parameters": count_parameters(module), "gflop": flops(fn) / 1e9}
    per_budget = {}
    for budget in config.sampler.budgets.distinct_budgets:
        per_budget[str(budget)] = (
            flops(lambda b=budget: model.dit(x, c_noise, text, mask, bpm, budget=b)) / 1e9
        )
    out["dit_gflop_per_budget"] = per_budget
    out["total_parameters"] = count_parameters(model)
    return out


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
