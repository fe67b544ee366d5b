"""Runtime checks and timings on a GPU for one build folder of PyTorch (AOTInductor) CUDA packages.

Reports: CUDA-graph replay against the uncaptured chain; end-to-end latency with and without the
graph (median, p90, min over --runs after warm-up); per-component latency (CUDA events); two threads
generating at once against one at a time; and the audio's SNR against presto_ref's fp32 eager
reference for the same prompt, BPM and seed (presto_ref is imported only after the runtime ran).

  python scripts/runtime_gpu_report.py --engines /tmp/build --json report.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

PROMPT = "warm lofi hip hop with piano and vinyl crackle"


def stats(times_ms: list[float]) -> dict:
    ordered = sorted(times_ms)
    return {
        "median_ms": statistics.median(ordered),
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))],
        "min_ms": ordered[0],
        "runs": len(ordered),
    }


def time_calls(fn, runs: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return stats(times)


def time_engine(engine, inputs, runs: int) -> dict:
    for _ in range(3):
        engine(*inputs)
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        engine(*inputs)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return stats(times)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / ((reference - test) ** 2).sum()))


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engines", type=Path, required=True)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--json", type=Path)
    p.add_argument("--init-seed", type=int, default=0)
    args = p.parse_args()
    from runtime.pipeline import Pipeline

    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    graph = Pipeline(args.engines, backend="torch", device="cuda", cuda_graph=True)
    eager = Pipeline(args.engines, backend="torch", device="cuda", cuda_graph=False)
    m = graph.manifest
    report["precision"] = m.artifacts[0].precision
    kw = dict(bpm=120.0, duration_s=m.max_duration_s)

    # 1. Replay equals the uncaptured chain.
    a_graph = graph.generate([PROMPT], seeds=[0], **kw).samples
    a_eager = eager.generate([PROMPT], seeds=[0], **kw).samples
    report["graph_vs_eager_max_abs"] = float(np.abs(a_graph - a_eager).max())
    print(f"graph vs uncaptured: max |diff| {report['graph_vs_eager_max_abs']:.3e}", flush=True)

    # 2. End-to-end latency, stereo and mono, batch 1 (text encoding is cached after the first call).
    for name, pipe in (("cuda_graph", graph), ("no_cuda_graph", eager)):
        for stereo in (True, False):
            key = f"e2e_{'stereo' if stereo else 'mono'}_{name}"
            report[key] = time_calls(
                lambda pipe=pipe, stereo=stereo: pipe.generate(
                    [PROMPT], seeds=[1], stereo=stereo, **kw
                ),
                args.runs,
            )
            print(f"{key}: {report[key]}", flush=True)

    # 3. Per component (CUDA events on the uncaptured engines).
    frames = round(m.max_duration_s * m.sample_rate / m.hop_length)
    text, mask = eager.encode_text([PROMPT])
    dev = torch.device("cuda")
    x = torch.randn(1, m.latent_channels, frames, device=dev)
    sigma, bpm = torch.ones(1, device=dev), torch.full((1,), 120.0, device=dev)
    comps = {}
    for art in m.artifacts:
        if art.backend != "torch" or not art.file.endswith("-cuda.pt2"):
            continue
        engine = eager._engine(art)
        if art.component == "text_encoder":
            from runtime.tokenizer import encode_prompts

            ids, msk = encode_prompts([PROMPT], m.max_tokens)
            inputs = (torch.from_numpy(ids).to(dev), torch.from_numpy(msk).to(dev))
        elif art.component == "dit":
            inputs = (x, sigma, text, mask, bpm)
        elif art.component == "vae_decoder":
            inputs = (x,)
        else:
            inputs = (
                torch.randn(1, 1, frames * m.hop_length, device=dev) * 0.2,
                torch.ones(1, device=dev),
            )
        name = art.component + (f"_b{art.budget}" if art.budget is not None else "")
        comps[name] = time_engine(engine, inputs, args.runs)
        print(f"{name}: {comps[name]}", flush=True)
    report["components"] = comps
    report["step_budgets"] = list(m.sampler.step_budgets)

    # 4. Two threads at once give what one at a time gives.
    solo = {s: graph.generate([PROMPT], seeds=[s], **kw).samples for s in (7, 8)}
    results: dict = {}

    def work(seed: int) -> None:
        results[seed] = graph.generate([PROMPT], seeds=[seed], **kw).samples

    threads = [threading.Thread(target=work, args=(s,)) for s in (7, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report["threads_max_abs"] = max(float(np.abs(results[s] - solo[s]).max()) for s in (7, 8))
    print(f"two threads vs one at a time: max |diff| {report['threads_max_abs']:.3e}", flush=True)

    # 5. SNR against the fp32 eager reference (imports presto_ref only now).
    from presto_ref.checkpoint import random_model
    from presto_ref.config import PrestoConfig
    from presto_ref.pipeline import Request

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref_model = random_model(PrestoConfig.from_dict(m.config), args.init_seed).cuda().eval()
    ref = ref_model.generate(Request(prompts=(PROMPT,), seeds=(0,), **kw)).cpu().numpy()
    report["snr_db_vs_fp32_reference"] = snr_db(ref, a_graph)
    report["snr_db_mono_downmix"] = snr_db(ref.mean(axis=1), a_graph.mean(axis=1))
    print(
        f"SNR vs fp32 reference: {report['snr_db_vs_fp32_reference']:.2f} dB "
        f"(mono downmix {report['snr_db_mono_downmix']:.2f} dB)",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
