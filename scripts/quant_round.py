"""The quantized DiT on a GPU in one device call: calibrate, measure what FP8 and INT8 cost in
fidelity (eager, every step and end to end), and time the compiled DiT packages of one budget.

A whole quantized folder (`python -m export.build --quantization`) compiles every budget and
bucket, about 10 minutes at paper scale; this round compiles only what the speed figures need:

    python scripts/quant_round.py --preset presto-ls --budget 0 --batches 1,32 --out $OUT

There it needs CXX=/usr/bin/g++ (see scripts/gpu_round.sh) and ModelOpt carried in .whl/:
nvidia-modelopt 0.47.0 and its missing dependencies, with pulp==3.3.2 (pulp 4.2 pulls orloge and
cpsat-logutils, which the image lacks).

Stages (--stages, default both), each precision of --precisions:
  fidelity  The export copy of the model (export.spec.export_model) in bf16, its DiT's GEMMs FP8 or
            INT8 with real kernels (export/quant_torch.py, the torch packages' modules), run
            eagerly. x0 per DiT step on the fp32 reference sampler's recorded inputs (held-out
            prompts, seeds 0..N-1), cosine and relative L2 against the bf16 copy and the fp32
            reference; end to end, the stereo audio and the latents of the same takes (same noise)
            against the fp32 reference, SNR in dB.
  speed     The AOTInductor package (export/torch_backend.py) of the DiT at --budget, bf16 or
            quantized, per batch of --batches: median of --runs calls after 5 (CUDA events, no CUDA
            graph), rows per second, the quantized GEMM calls in its wrapper code, and one call's
            GPU time by kernel class (benchmarks.profile). --precisions may also name
            bf16-masked: the bf16 DiT with the text padding mask export/attention.py removes;
            bf16-rope-inline: the bf16 DiT computing its rotary cos/sin in every block instead of
            reading export/attention.py's tables; fp8-sdpa: the FP8 DiT with its attention in
            FP8 too (export/fp8_sdpa.py; needs nvidia-cudnn-frontend on CUDA). A "+autotune"
            suffix (bf16+autotune, fp8+autotune) compiles that form with Inductor's max_autotune
            (GEMM templates with fused epilogues, benchmarked at compile time; export builds leave
            it off) and is compared against bf16+autotune.
OUT/quant-round.json is rewritten after every measurement, so a call cut short keeps its figures.
Calibrations are kept in --work (default OUT/work) and reused there: a second call with the same
--work (the device machine keeps files between calls while it stays warm) does not calibrate again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.environment import gpu_driver_version, host_environment
from benchmarks.measure import Timer, time_fn
from benchmarks.profile import profile_call
from calibration.calibrate import main as calibrate_main
from calibration.fidelity import snr_summary, summarize
from calibration.report import DEFAULT_PROMPTS
from calibration.trajectories import PROMPTS_FILE, calibration_bpms, read_prompts, record_dit_calls
from export.quant_scales import SUMMARY_FILE, load_calibration
from export.quant_torch import package_quantized_gemms, quantized_torch_model
from export.spec import dit_batch_size, dit_spec, export_model, graph_for
from export.torch_backend import compile_package
from presto_ref.checkpoint import random_model
from presto_ref.pipeline import Presto

# The bf16 DiTs --precisions may name, as export_model options: bf16 itself, and forms without one
# export rewrite (speed rows only, beside bf16)
BF16_FORMS = {
    "bf16": {},
    "bf16-masked": {"mask_free": False},
    "bf16-rope-inline": {"rope_tables": False},
}
# A precision's suffix that compiles its package with these Inductor options (export/torch_backend.py
# DEFAULT_OPTIONS otherwise).
AUTOTUNE_SUFFIX, AUTOTUNE_OPTIONS = "+autotune", {"max_autotune": True}
# The FP8 DiT with its attention in FP8 too (export/fp8_sdpa.py), from the fp8 calibration.
SDPA_FORM = "fp8-sdpa"


def quantization_of(form: str) -> tuple[str, bool]:
    """'fp8-sdpa' -> ('fp8', True): the calibration's precision and whether attention is FP8."""
    return ("fp8", True) if form == SDPA_FORM else (form, False)


def split_form(q: str) -> tuple[str, dict]:
    """'fp8+autotune' -> ('fp8', AUTOTUNE_OPTIONS); 'fp8' -> ('fp8', {})."""
    if q.endswith(AUTOTUNE_SUFFIX):
        return q.removesuffix(AUTOTUNE_SUFFIX), dict(AUTOTUNE_OPTIONS)
    return q, {}


def baseline_of(q: str) -> str:
    """The row a speed row is compared with: bf16 at the same Inductor options."""
    return "bf16" + (AUTOTUNE_SUFFIX if q.endswith(AUTOTUNE_SUFFIX) else "")


class PerBudget(torch.nn.Module):
    """D(x; sigma) that sends each call to the denoiser quantized for its budget: a budget's
    scales are its own (calibrated on its steps), and blocks two budgets share differ in each."""

    def __init__(self, denoisers: dict[int, torch.nn.Module]) -> None:
        super().__init__()
        self.denoisers = torch.nn.ModuleDict({str(b): d for b, d in denoisers.items()})

    def forward(self, x, sigma, *, budget: int, **cond):
        return self.denoisers[str(budget)](x, sigma, budget=budget, **cond)


def variant(model: Presto, precision: str, calibration, device: torch.device) -> Presto:
    """The bf16 export copy of `model`; unless bf16, its denoiser dispatches each budget to a copy
    of the DiT whose GEMMs that budget's scales quantize (real kernels, export/quant_torch.py),
    and for fp8-sdpa its attention too."""
    clone = export_model(model, "bf16")
    if precision != "bf16":
        denoisers = {}
        sdpa = quantization_of(precision)[1]
        for budget in model.config.sampler.budgets.distinct_budgets:
            copy, _ = quantized_torch_model(model, budget, calibration, "bf16", fp8_attention=sdpa)
            denoisers[budget] = copy.denoiser
        clone.denoiser = PerBudget(denoisers)
    return clone.to(device)


@torch.no_grad()
def fidelity(model: Presto, variants: dict[str, Presto], seeds: int, device) -> dict:
    """x0 per step on the reference's recorded inputs, and SNR of latents and audio end to end."""
    config, frames = model.config, model.config.max_frames
    prompts = DEFAULT_PROMPTS[:2]
    calls = record_dit_calls(model, prompts, list(range(seeds)), config.max_duration_s)
    num_steps = len(calls) // len(prompts)
    graphs = {name: {} for name in ["fp32", *variants]}
    exported = export_model(model.cpu(), "fp32").to(device)
    model.to(device)
    x0: dict[str, list[list[torch.Tensor]]] = {n: [[] for _ in range(num_steps)] for n in graphs}
    for k, call in enumerate(calls):
        step = k % num_steps
        for name, m in [("fp32", exported), *variants.items()]:
            dit = graphs[name].setdefault(call.budget, graph_for(m, "dit", call.budget))
            x0[name][step].append(dit(*(t.to(device) for t in call.feeds())).float().cpu())
    steps = []
    for step in range(num_steps):
        row = {"step": step, "budget": calls[step].budget, "sigma": float(calls[step].sigma[0])}
        for name in variants:
            row[name] = {"vs_fp32": summarize(x0[name][step], x0["fp32"][step])}
            if name != "bf16" and "bf16" in variants:
                row[name]["vs_bf16"] = summarize(x0[name][step], x0["bf16"][step])
        steps.append(row)
    # End to end: the same takes (prompts, BPMs, seeds: the same noise) through every chain.
    latents: dict[str, list] = {}
    audio: dict[str, list] = {}
    bpms = calibration_bpms(config.bpm_range, len(prompts))
    for prompt, bpm in zip(prompts, bpms):
        for name, m in [("fp32", model), *variants.items()]:
            text, mask = m.encode_text((prompt,) * seeds)
            bpm_t = torch.full((seeds,), bpm, device=device)
            x = m.sample_latents(text, mask, bpm_t, list(range(seeds)), frames, config.sampler)
            latents.setdefault(name, []).extend(x.float().cpu())
            audio.setdefault(name, []).extend(m.to_stereo(m.decode(x)).float().cpu())
    end_to_end = {
        name: {
            "latents": snr_summary(latents[name], latents["fp32"]),
            "audio": snr_summary(audio[name], audio["fp32"]),
        }
        for name in variants
    }
    return {"prompts": list(prompts), "seeds": seeds, "steps": steps, "end_to_end": end_to_end}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="presto-ls")
    p.add_argument("--budget", type=int, default=0, help="the DiT budget the speed stage compiles")
    p.add_argument("--batches", default="1,16", help="batches the speed stage times")
    p.add_argument("--prompts", type=int, default=4, help="calibration prompts (first N shipped)")
    p.add_argument("--seeds", type=int, default=2, help="fidelity: takes per held-out prompt")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument(
        "--profile-top",
        type=int,
        default=40,
        help="kernels listed per profile (default 40: at 8f2efd5 the top 8 named 63 of the FP8 "
        "package's 138 ms of fused kernels at 128 takes)",
    )
    p.add_argument("--precisions", default="bf16,fp8,int8")
    p.add_argument("--stages", default="fidelity,speed")
    p.add_argument("--device", default="cuda", help="cpu: a trial run of the script (tiny preset)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, help="calibrations and packages (default OUT/work)")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    dev = torch.device(args.device)
    precisions, stages = args.precisions.split(","), args.stages.split(",")
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    doc: dict = {
        "args": vars(args) | {"out": str(args.out), "work": str(work)},
        "torch": torch.__version__,
        # git commit and whether tracked files differ: the code a record was measured with
        "environment": host_environment() | {"gpu_driver": gpu_driver_version()},
    }
    if dev.type == "cuda":
        doc["gpu"] = torch.cuda.get_device_name()

    def save() -> None:
        (args.out / "quant-round.json").write_text(json.dumps(doc, indent=1) + "\n")

    prompt_file = work / "prompts.txt"
    prompt_file.write_text("\n".join(read_prompts(PROMPTS_FILE)[: args.prompts]) + "\n")
    calibrations: dict = {"bf16": None}

    def calibration_of(q: str):
        """calibration.calibrate on --device, once per precision, when first needed."""
        folder = work / f"calib-{q}"
        if q not in calibrations and (folder / SUMMARY_FILE).exists():
            calibrations[q] = load_calibration(folder)  # an earlier call's, same --work
            doc.setdefault("calibrate_s", {})[q] = "reused from " + str(folder)
        if q not in calibrations:
            start = time.perf_counter()
            argv_q = ["--preset", args.preset, "--precision", q, "--device", args.device]
            argv_q += ["--prompts", str(prompt_file), "--seeds", "1", "-o", str(folder), "-q"]
            if calibrate_main(argv_q) != 0:
                raise SystemExit(f"calibration {q} failed")
            calibrations[q] = load_calibration(folder)
            doc.setdefault("calibrate_s", {})[q] = round(time.perf_counter() - start, 1)
            save()
        return calibrations[q]

    model = random_model(args.preset, 0).eval()
    frames = model.config.max_frames
    if "fidelity" in stages:
        start = time.perf_counter()
        variants = {
            q: variant(model, q, calibration_of(quantization_of(q)[0]), dev)
            for q in precisions
            if (q == "bf16" or q not in BF16_FORMS) and not q.endswith(AUTOTUNE_SUFFIX)
        }  # the eager forms: Inductor's options do not apply
        doc["fidelity"] = fidelity(model.to(dev), variants, args.seeds, dev)
        doc["fidelity"]["seconds"] = round(time.perf_counter() - start, 1)
        model.cpu()
        del variants
        print(json.dumps(doc["fidelity"]["end_to_end"]), flush=True)
        save()

    if "speed" in stages:
        for q in precisions:
            form, options = split_form(q)
            for batch in batches:
                if form in BF16_FORMS:
                    clone = export_model(model, "bf16", **BF16_FORMS[form])
                else:
                    base, sdpa = quantization_of(form)
                    clone, _ = quantized_torch_model(
                        model, args.budget, calibration_of(base), "bf16", fp8_attention=sdpa
                    )
                rows = dit_batch_size(model.config, batch)  # the DiT spec a build would make
                spec = dit_spec(clone, "bf16", rows, frames, args.budget)
                module = spec.module.to(dev)
                path = work / f"dit-b{args.budget}-{q}-{batch}x{frames}.pt2"
                start = time.perf_counter()
                with torch.no_grad():
                    compile_package(
                        module,
                        spec.sample_inputs(device=dev),
                        path,
                        device=args.device,
                        options=options,
                    )
                build_s = time.perf_counter() - start
                inputs = spec.sample_inputs(seed=1, device=dev)
                del module, clone, spec
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(dev)
                run = torch._inductor.aoti_load_package(str(path))
                with torch.no_grad():
                    timing = time_fn(Timer(dev), lambda _, f=run, x=inputs: f(*x), args.runs, 5)
                    profile = (
                        profile_call(lambda f=run, x=inputs: f(*x), top=args.profile_top)
                        if dev.type == "cuda"
                        else None
                    )
                row = {
                    "precision": q,
                    "batch": batch,
                    "build_s": round(build_s, 1),
                    "quantized_gemm_calls": package_quantized_gemms(path),
                    **timing,
                    "rows_per_s": batch / timing["median_ms"] * 1e3,
                    # the package's weights, workspace and the inputs, while it ran
                    "peak_mib": (
                        torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
                    ),
                    "profile": profile,
                }
                doc.setdefault("speed", []).append(row)
                print(json.dumps(row), flush=True)
                save()
                del run
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
        by = {(r["precision"], r["batch"]): r for r in doc["speed"]}
        doc["speedup_vs_bf16"] = {
            f"{q}@{b}": by[(baseline_of(q), b)]["median_ms"] / by[(q, b)]["median_ms"]
            for (q, b) in by
            if q != baseline_of(q) and (baseline_of(q), b) in by
        }  # bf16-masked@B below 1: what removing the mask gained; bf16-rope-inline: the tables
        print(json.dumps(doc["speedup_vs_bf16"]))
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
