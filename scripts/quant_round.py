"""The quantized DiT on a GPU: calibrate, compile the bf16, FP8 and INT8 DiT packages of one budget,
time them at batch 1 and a large batch, and compare their x0 on the sampler's own inputs.

One device call (about 8 minutes on an H200 at paper scale), so it builds only the DiT of one
budget, not a whole folder (`python -m export.build --quantization` builds every component):

    python scripts/quant_round.py --preset presto-ls --budget 0 --batches 1,16 --out $OUT

There it needs CXX=/usr/bin/g++ (see scripts/gpu_round.sh) and ModelOpt carried in .whl/:
nvidia-modelopt 0.47.0 and its missing dependencies, with pulp==3.3.2 (pulp 4.2 pulls orloge and
cpsat-logutils, which the image lacks).

For each precision (bf16; fp8 and int8 with real GEMMs, export/quant_torch.py, bf16 elsewhere)
and batch: the AOTInductor package of export/torch_backend.py, its median time over --runs CUDA
graph-free calls (CUDA events), rows per second, and its count of quantized GEMM calls. Fidelity:
the fp32 reference sampler's recorded DiT inputs (one prompt, seed 0) at the steps that use the
budget go through every package at batch 1; cosine and relative L2 of x0 against the bf16 package
and against the fp32 reference DiT. Writes OUT/quant-round.json after every measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from calibration.calibrate import main as calibrate_main
from calibration.trajectories import PROMPTS_FILE, read_prompts, record_dit_calls
from export.quant_scales import load_calibration
from export.quant_torch import package_quantized_gemms, quantize_dit_torch
from export.spec import export_model, graph_for, make_specs
from export.torch_backend import compile_package
from presto_ref.checkpoint import random_model


def cosine_rel_l2(want: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    a, b = want.double().flatten(), got.double().flatten()
    return {
        "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
        "rel_l2": float((a - b).norm() / a.norm()),
    }


def time_ms(run, inputs, runs: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        run(*inputs)
    if inputs[0].device.type == "cpu":  # a trial of this script off the GPU
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            run(*inputs)
            times.append((time.perf_counter() - start) * 1e3)
        return times
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(*inputs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="presto-ls")
    p.add_argument("--budget", type=int, default=0)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--prompts", type=int, default=4, help="calibration prompts (first N shipped)")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--precisions", default="bf16,fp8,int8")
    p.add_argument("--device", default="cuda", help="cpu: a trial run of the script (tiny preset)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    dev = torch.device(args.device)
    precisions = args.precisions.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    doc: dict = {"args": vars(args) | {"out": str(args.out)}, "device": args.device}
    if args.device == "cuda":
        doc["gpu"] = torch.cuda.get_device_name()
    doc["torch"] = torch.__version__

    def save() -> None:
        (args.out / "quant-round.json").write_text(json.dumps(doc, indent=1) + "\n")

    # 1. Calibrations on the sampler's trajectories (calibration.calibrate, on the GPU).
    prompts = read_prompts(PROMPTS_FILE)[: args.prompts]
    prompt_file = work / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    calibrations = {}

    def calibration_of(q: str):
        """calibration.calibrate on the GPU, once per precision, when first needed."""
        if q not in calibrations:
            start = time.perf_counter()
            folder = work / f"calib-{q}"
            argv_q = ["--preset", args.preset, "--precision", q, "--device", args.device]
            argv_q += ["--prompts", str(prompt_file), "--seeds", "1", "-o", str(folder), "-q"]
            if calibrate_main(argv_q) != 0:
                raise SystemExit(f"calibration {q} failed")
            calibrations[q] = load_calibration(folder)
            doc.setdefault("calibrate_s", {})[q] = round(time.perf_counter() - start, 1)
            save()
        return calibrations[q]

    # 2. The reference's recorded DiT inputs at the steps that run this budget.
    model = random_model(args.preset, 0).eval()
    frames = model.config.max_frames
    with torch.no_grad():
        calls = record_dit_calls(model.to(dev), prompts[:1], [0], model.config.max_duration_s)
        model.cpu()
    steps = [(i, c) for i, c in enumerate(calls) if c.budget == args.budget]
    doc["steps"] = [i for i, _ in steps]
    ref_dit = graph_for(export_model(model, "fp32"), "dit", args.budget).to(dev)
    with torch.no_grad():
        ref_x0 = [ref_dit(*(t.to(dev) for t in c.feeds())).float() for _, c in steps]
    del ref_dit

    # 3. Each precision and batch: compile, count, time; x0 at batch 1.
    bf16_x0: list[torch.Tensor] = []
    for q in precisions:
        for batch in batches:
            (spec,) = make_specs(
                model, "bf16", (batch,), (frames,), (args.budget,), components=("dit",)
            )
            clone = export_model(model, "bf16")
            if q != "bf16":
                layers = calibration_of(q).layers(args.budget)
                quantize_dit_torch(clone.dit, args.budget, layers, q)
            module = graph_for(clone, "dit", args.budget).to(dev)
            path = work / f"dit-b{args.budget}-{q}-{batch}x{frames}.pt2"
            start = time.perf_counter()
            with torch.no_grad():
                compile_package(module, spec.sample_inputs(device=dev), path, device=args.device)
            build_s = time.perf_counter() - start
            del module, clone
            run = torch._inductor.aoti_load_package(str(path))
            feeds = [
                tuple(t.to(dev).repeat_interleave(batch, 0) for t in c.feeds()) for _, c in steps
            ]
            with torch.no_grad():
                times = time_ms(run, feeds[0], args.runs)
            median = statistics.median(times)
            row = {
                "precision": q,
                "batch": batch,
                "build_s": round(build_s, 1),
                "quantized_gemm_calls": package_quantized_gemms(path),
                "median_ms": median,
                "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))],
                "rows_per_s": batch / median * 1e3,
            }
            if batch == 1:
                with torch.no_grad():
                    x0 = [run(*f).float() for f in feeds]
                if q == "bf16":
                    bf16_x0 = x0
                row["x0_per_step"] = [
                    {
                        "step": i,
                        "vs_fp32": cosine_rel_l2(r, g),
                        "vs_bf16": cosine_rel_l2(b, g) if bf16_x0 else None,
                    }
                    for (i, _), r, b, g in zip(steps, ref_x0, bf16_x0 or x0, x0)
                ]
            doc.setdefault("results", []).append(row)
            print(json.dumps(row), flush=True)
            save()
            del run
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    by = {(r["precision"], r["batch"]): r for r in doc["results"]}
    doc["speedup_vs_bf16"] = {
        f"{q}@{b}": by[("bf16", b)]["median_ms"] / by[(q, b)]["median_ms"]
        for q in precisions
        for b in batches
        if q != "bf16" and ("bf16", b) in by and (q, b) in by
    }
    print(json.dumps(doc["speedup_vs_bf16"]))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
