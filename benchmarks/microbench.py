"""Kernel-level measurements behind the DiT's speed and its bf16 error, at a preset's shapes.

Parts (--parts, default all), each timed with benchmarks.measure's timer (CUDA events, median of
--runs after --warmup):

  gemm       the DiT's projections as the reference runs them (q on the audio tokens; k and v on
             [audio; text]; w1 and w3 apart) against the fused forms export uses (one [q|k|v] GEMM
             on the audio tokens plus [k|v] on the text; [w1|w3] in one GEMM), beside an 8192^3
             matmul, in bf16 with TFLOP/s
             and, on a GPU with FP8 (compute capability 8.9+), the fused GEMMs as E4M3 products
             (torch._scaled_mm, per-tensor scales, bf16 out) with and without fast accumulation
  attention  one attention layer (B x heads, T_lat audio queries, T_lat + S keys, the preset's head
             width d) with each SDPA backend that accepts it: with the text padding mask (memory-
             efficient, cuDNN, math) and without it (flash, cuDNN, memory-efficient), so the mask's
             cost shows, and unmasked at the padded head width d' of export/attention.py (72 -> 80);
             relative L2 error against fp32 for the masked cases
  dit-error  the eager bf16 DiT at budget 0 against the fp32 one on this GPU (TF32 off): relative
             L2 error with the defaults, with reduced-precision bf16 GEMM reductions off, with the
             math attention, and on the CPU, so the error's source shows
  dit-profile  the eager bf16 DiT at budget 0: median time and where its GPU time goes
             (benchmarks.profile's kernel classes)
  convs      the eager bf16 VAE decoder and mono-to-stereo model with cudnn.benchmark off and on
  snake-conv one residual unit of the VAE decoder's last block (Snake, conv_k,d, Snake, conv_1, +x;
             bf16 channels-last, each dilation, --batch takes): Inductor's compiled unit (cuDNN
             convolutions, Snake in passes of its own) against benchmarks/snake_conv.py's Triton
             prototype with Snake in the convolutions, with TFLOP/s and the error against fp32

The models are presto_ref's with seeded random weights (--init-seed); everything runs at the
preset's longest duration, gemm and attention at --batch takes (M = B T_lat rows), the rest at 1.
A part that fails is recorded as "<part>_error" and the others still run; the exit code is then 1.
The last stdout line is the whole result as one JSON document; --json PATH writes it too, after
every part, so a run cut short keeps what it measured.

examples:
  python -m benchmarks.microbench --json microbench.json
  python -m benchmarks.microbench --parts gemm,attention --runs 50
  python -m benchmarks.microbench --parts gemm,attention --batch 16 --json b16.json
  python -m benchmarks.microbench --preset small --parts dit-error,convs --json small.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.kernels import PARTS, Bench
from benchmarks.report import write_json
from presto_common.cli import add_logging_flags, run_main, setup_logging
from presto_common.errors import BackendUnavailable, PrestoError

log = logging.getLogger("benchmarks.microbench")


# --- command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.microbench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        metavar="LIST",
        help=f"comma-separated, from {','.join(PARTS)} (default: all)",
    )
    p.add_argument(
        "--preset", default="presto-ls", metavar="NAME", help="shapes and model (default presto-ls)"
    )
    p.add_argument("--init-seed", type=int, default=0, metavar="N", help="model seed (default 0)")
    p.add_argument(
        "--batch", type=int, default=1, metavar="B", help="takes of gemm and attention (default 1)"
    )
    p.add_argument("--runs", type=int, default=20, metavar="N", help="timed runs (default 20)")
    p.add_argument("--warmup", type=int, default=5, metavar="N", help="untimed runs (default 5)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the result here")
    add_logging_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts {args.parts!r}: unknown {unknown}; choose from {','.join(PARTS)}")
    if args.runs < 1 or args.warmup < 0 or args.batch < 1:
        parser.error(
            f"--runs {args.runs} and --batch {args.batch} must be >= 1, --warmup {args.warmup} >= 0"
        )
    setup_logging(args)
    outputs: list[Path] = []

    def body() -> list[Path]:
        failed: list[str] = []
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                "benchmarks.microbench measures CUDA kernels and no CUDA device is available; "
                "run it on the GPU machine (scripts/gpu_round.sh with STEPS=micro)"
            )
        bench = Bench(args.preset, args.init_seed, args.runs, args.warmup, args.batch)
        report: dict[str, Any] = {
            "preset": args.preset,
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "runs": args.runs,
            "warmup": args.warmup,
            "batch": args.batch,
            "complete": False,
        }
        for name in parts:
            start = time.perf_counter()
            try:
                report[name] = PARTS[name](bench)
            except Exception as err:  # noqa: BLE001  one failed part must not hide the others
                log.warning("part %s failed: %r; the other parts still run", name, err)
                report[name + "_error"] = repr(err)
                failed.append(name)
            log.info("part %s: %.1f s", name, time.perf_counter() - start)
            torch.cuda.empty_cache()
            if args.json:
                write_json(args.json, report)
        report["complete"] = True
        if args.json:
            write_json(args.json, report)
            outputs.append(args.json)
        print(json.dumps(report))
        if failed:
            raise PrestoError(
                f"parts {','.join(failed)} failed (their errors are under <part>_error in the "
                f"result); the other parts' figures stand"
            )
        return outputs

    return run_main(body, argv, {"parts": args.parts, "preset": args.preset})


if __name__ == "__main__":
    raise SystemExit(main())
