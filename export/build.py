"""Build deployable artifacts from a checkpoint (or a preset's seeded random init).

For every component (text encoder, DiT once per layer budget, VAE decoder, mono-to-stereo) and
every (batch, duration) bucket: an ONNX file, a TensorRT or TensorRT-RTX engine built from it, and a
PyTorch AOTInductor package, plus `manifest.json`, which describes them all. Everything is written
into a temporary folder and moved into place at the end; artifacts of an earlier build in --out (or in
a --reuse-from folder) whose inputs, weights included, did not change are reused. For a dpmpp-2s
model the DiT is built at 2B rows per batch size B (CFG++'s two passes in one call). From Python:
`export.build_folder(out, preset=..., ...)`, which this command line wraps.

examples:
  python -m export.build --preset tiny --out artifacts/tiny
  python -m export.build --preset presto-ls --precision bf16 --backends onnx,tensorrt --trt rtx \\
      --compute-capabilities 8.0,8.6 --no-verify --out artifacts/presto-ls-bf16
  python -m export.build --checkpoint ckpt/ --backends torch --device cuda --precision bf16 \\
      --batch-sizes 1,4 --durations-s 10,32 --out artifacts/mine
  # INT8 DiT GEMMs from a calibration of the same model (python -m calibration.calibrate); FP8
  # needs --compute-capabilities 8.9 or later
  python -m calibration.calibrate --preset tiny --precision int8 --duration-s 1 -o artifacts/calib
  python -m export.build --preset tiny --quantization int8 --calibration artifacts/calib \\
      --durations-s 1 --backends onnx,tensorrt --trt rtx --out artifacts/tiny-int8
  # the FP8 DiT attending in FP8 too: torch packages on an Ada/Hopper/Blackwell GPU, with the
  # calibration's attention ranges and nvidia-cudnn-frontend (pip install -e ".[cudnn]")
  python -m export.build --preset presto-ls --backends torch --device cuda --precision bf16 \\
      --quantization fp8 --calibration artifacts/calib-fp8 --fp8-attention --out artifacts/ls-fp8
  # buckets built apart (separate jobs or machines with the same GPU), then assembled by hard links;
  # builds sharing one GPU autotune under contention and come out slower (README)
  python -m export.build --backends torch --device cuda --batch-sizes 32 --out artifacts/b32
  python -m export.build --backends torch --device cuda --batch-sizes 1,32 --out artifacts/b1 \\
      --reuse-from artifacts/b32
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from export.folder import BuiltArtifact, build_folder
from presto_common.cli import add_logging_flags, run_main, setup_logging
from presto_common.errors import ConfigError
from presto_common.names import PRECISIONS, QUANTIZATIONS
from presto_ref.checkpoint import read_config
from presto_ref.presets import DEFAULT_PRESET, PRESETS, get_preset

# --- command line --------------------------------------------------------------------------------


def parse_list(text: str | None, kind: type) -> tuple | None:
    """'1,4' -> (1, 4); None stays None; raises ConfigError naming the bad item."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(kind(t) for t in items)
    except ValueError:
        raise ConfigError(
            f"cannot read {text!r} as a comma-separated list of {kind.__name__}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--preset",
        metavar="NAME",
        help=f"random-init preset, one of {sorted(PRESETS)} (default {DEFAULT_PRESET})",
    )
    src.add_argument("--checkpoint", type=Path, metavar="DIR", help="checkpoint directory")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="build folder (default artifacts/<model>)"
    )
    p.add_argument(
        "--backends",
        metavar="LIST",
        help="comma-separated from onnx,tensorrt,torch (default: all this machine can build)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="weights and activations of every graph (fp32 islands stay) (default fp32)",
    )
    p.add_argument(
        "--batch-sizes", default="1", metavar="LIST", help="static batch buckets (default 1)"
    )
    p.add_argument(
        "--durations-s",
        metavar="LIST",
        help="duration buckets in seconds, rounded to whole frames (default: the max)",
    )
    p.add_argument(
        "--budgets",
        metavar="LIST",
        help="DiT budgets to build (default: every budget of the sampler schedule)",
    )
    p.add_argument(
        "--trt",
        choices=("tensorrt", "rtx"),
        help="TensorRT flavor (default: tensorrt where importable, else rtx)",
    )
    p.add_argument(
        "--compute-capabilities",
        metavar="LIST",
        help="RTX ahead-of-time targets, e.g. 8.0,8.6,8.9,12.0 (default 8.0)",
    )
    p.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        help="quantize the DiT's GEMMs (Q/DQ in ONNX, real FP8/INT8 kernels in torch packages) with "
        "--calibration's scales; everything else stays at --precision",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="a folder written by `python -m calibration.calibrate` for this model, at the "
        "--quantization precision",
    )
    p.add_argument(
        "--fp8-attention",
        action="store_true",
        help="with --quantization fp8: the torch packages' DiT computes its attention in FP8 too "
        "(cuDNN's FP8 SDPA on CUDA; needs the calibration's attention ranges and "
        "nvidia-cudnn-frontend); ONNX and TensorRT keep bf16 attention",
    )
    p.add_argument("--device", default="cpu", help="device the torch packages are compiled for")
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="check each ONNX file against the reference on ONNX Runtime (CPU)",
    )
    p.add_argument(
        "--init-seed", type=int, default=0, help="seed of the random init without --checkpoint"
    )
    p.add_argument(
        "--reuse-from",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="another build folder to take matching artifacts from instead of rebuilding them "
        "(repeatable; e.g. buckets built in parallel)",
    )
    add_logging_flags(p)
    return p


def print_summary(built: list[BuiltArtifact]) -> None:
    head = f"{'artifact':<30}{'backend':<10}{'precision':<10}{'size MB':>10}{'build s':>10}  note"
    print(head)
    print("-" * len(head))
    for b in built:
        art = b.artifact
        note = "reused" if b.reused else ""
        parity = art.build.get("parity")
        if parity:
            note += f" rel L2 {parity['rel_l2']:.1e}, cos {parity['cosine']:.6f}"
        print(
            f"{b.name:<30}{art.backend:<10}{art.quantization or art.precision:<10}"
            f"{art.size_bytes / 1e6:>10.2f}"
            f"{art.build.get('build_s', b.seconds):>10.1f}  {note.strip()}"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging(args)

    def body() -> list[Path]:
        # --out first, before the model is loaded: the default is named after the model's config.
        if args.out is None:
            config = (
                read_config(args.checkpoint)
                if args.checkpoint is not None
                else get_preset(args.preset or DEFAULT_PRESET)
            )
        out = args.out or Path("artifacts") / config.name  # build_folder checks it first
        built: list[BuiltArtifact] = []
        manifest = build_folder(
            out,
            preset=args.preset,
            checkpoint=args.checkpoint,
            init_seed=args.init_seed,
            backends=parse_list(args.backends, str),
            precision=args.precision,
            batch_sizes=parse_list(args.batch_sizes, int),
            durations_s=parse_list(args.durations_s, float),
            budgets=parse_list(args.budgets, int),
            trt=args.trt,
            compute_capabilities=parse_list(args.compute_capabilities, str) or (),
            device=args.device,
            verify=args.verify,
            reuse_from=args.reuse_from,
            on_artifact=built.append,
            quantization=args.quantization,
            calibration=args.calibration,
            fp8_attention=args.fp8_attention,
        )
        print_summary(built)
        summary = {
            "out": str(out),
            "artifacts": len(manifest.artifacts),
            "config_hash": manifest.config_hash,
        }
        print(json.dumps(summary))
        return [out]

    return run_main(body, argv, {"preset": args.preset, "checkpoint": args.checkpoint})


if __name__ == "__main__":
    raise SystemExit(main())
