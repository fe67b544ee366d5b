"""The parts of `python -m benchmarks.microbench`, whose docstring says what each one measures.

`Bench` holds what every part needs (the CUDA device, the timer, run counts and the preset's
reference model, built once); each part takes it, prints one line per figure as it goes, and returns
its section of the JSON result. `PARTS` maps the --parts names to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import export
from benchmarks.measure import Timer, prepare_profiler, time_fn
from benchmarks.profile import profile_call
from presto_common.errors import BackendUnavailable

MATMUL_N = 8192  # the square bf16 matmul that gives this GPU's dense rate (benchmarks.measure)
TEXT_KEPT = 20  # unmasked text tokens of the attention part's padding mask (a short prompt)
AUDIO_SCALE = 0.2  # RMS of the random mono audio fed to the mono-to-stereo model


class Bench:
    """What every part needs: the device, the timer, run counts, and the preset's model (built once)."""

    def __init__(self, preset: str, init_seed: int, runs: int, warmup: int, batch: int = 1) -> None:
        from presto_ref.presets import get_preset

        self.device = torch.device("cuda")
        self.timer = Timer(self.device)
        prepare_profiler(self.device)  # before any CUDA graph of this process (benchmarks.measure)
        self.runs, self.warmup, self.batch = runs, warmup, batch
        self.preset, self.init_seed = preset, init_seed
        self.config = get_preset(preset)
        self.models: dict[torch.dtype, Any] = {}

    def time_ms(self, fn: Callable[[], Any]) -> dict[str, float]:
        """median_ms, p90_ms, min_ms, cv and runs of fn() (benchmarks.measure.time_fn)."""
        return time_fn(self.timer, lambda i: fn(), self.runs, self.warmup)

    def model(self, dtype: torch.dtype, device: torch.device | str):
        """The preset's reference model (presto_ref) with seeded random weights in `dtype`, eval
        mode, moved to `device`. Built once per dtype: every part shares it (and moves it)."""
        if dtype not in self.models:
            from presto_ref.checkpoint import random_model

            self.models[dtype] = random_model(self.config, self.init_seed).eval().to(dtype)
        return self.models[dtype].to(device)

    def dit_inputs(self) -> tuple[torch.Tensor, ...]:
        """x (1, C_lat, T_lat) at sigma 1, T5 tokens (1, S, D_text), a short prompt's mask, BPM
        120, on the CPU: the arguments of `Presto.denoise` after sigma."""
        cfg = self.config
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, cfg.dit.latent_channels, cfg.max_frames, generator=g)
        text = torch.randn(1, cfg.text.max_tokens, cfg.text.d_model, generator=g)
        mask = torch.zeros(1, cfg.text.max_tokens, dtype=torch.bool)
        mask[:, :TEXT_KEPT] = True
        return x, text, mask, torch.full((1,), 120.0)


def rel_l2(test: torch.Tensor, reference: torch.Tensor) -> float:
    test, reference = test.double().cpu(), reference.double().cpu()
    return ((test - reference).norm() / reference.norm()).item()


def gemm(b: Bench) -> dict[str, Any]:
    cfg, dev, bf16 = b.config.dit, b.device, torch.bfloat16
    # rows of the audio tokens' and the text tokens' GEMMs, width, FFN hidden
    M, S = b.batch * b.config.max_frames, b.batch * b.config.text.max_tokens
    D, H = cfg.width, cfg.ffn_hidden

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, device=dev, dtype=bf16) * scale

    # audio tokens, projected text, FFN hidden
    a, t, h = randn(M, D), randn(S, D), randn(M, H)
    at = torch.cat([a, t])
    wq, wk, wv, wo = (randn(D, D, scale=D**-0.5) for _ in range(4))
    w1, w3 = randn(D, H, scale=D**-0.5), randn(D, H, scale=D**-0.5)
    w2 = randn(H, D, scale=H**-0.5)
    wqkv, wkv, w13 = torch.cat([wq, wk, wv], 1), torch.cat([wk, wv], 1), torch.cat([w1, w3], 1)
    big = randn(MATMUL_N, MATMUL_N)
    rows: dict[str, tuple[Callable[[], Any], int]] = {  # name: (call, FLOPs)
        f"matmul_{MATMUL_N}": (lambda: big @ big, 2 * MATMUL_N**3),
        "q_k_v_apart": (lambda: (a @ wq, at @ wk, at @ wv), 2 * D * D * (M + 2 * (M + S))),
        "qkv_fused_plus_text_kv": (lambda: (a @ wqkv, t @ wkv), 2 * D * D * (3 * M + 2 * S)),
        "o": (lambda: a @ wo, 2 * M * D * D),
        "w1_w3_apart": (lambda: (a @ w1, a @ w3), 4 * M * D * H),
        "w13_fused": (lambda: a @ w13, 4 * M * D * H),
        "w2": (lambda: h @ w2, 2 * M * D * H),
    }
    if torch.cuda.get_device_capability(dev) >= (8, 9):  # FP8 tensor cores (Ada, Hopper)
        rows.update(fp8_gemms(a, t, h, wqkv, wkv, w13, w2))
    out: dict[str, Any] = {"rows_M": M}
    for name, (fn, flop) in rows.items():
        row = b.time_ms(fn)
        row["tflops"] = flop / row["median_ms"] / 1e9
        out[name] = row
        print(
            f"gemm {name:<24} {row['median_ms']:8.4f} ms {row['tflops']:8.1f} TFLOP/s", flush=True
        )
    return out


def fp8_gemms(a, t, h, wqkv, wkv, w13, w2) -> dict[str, tuple[Callable[[], Any], int]]:
    """The fused GEMMs as torch._scaled_mm E4M3 products (per-tensor scales 1, bf16 out), the
    inputs cast once outside the timing: name_fp8 (accumulation as cuBLASLt's default) and
    name_fp8_fast (use_fast_accum=True, Hopper's faster, less exact accumulation)."""
    e4m3, one = torch.float8_e4m3fn, torch.ones((), device=a.device)
    a8, t8, h8 = a.to(e4m3), t.to(e4m3), h.to(e4m3)
    # _scaled_mm wants the second operand column-major: the transpose of a row-major (N, K)
    w8 = {
        n: w.t().contiguous().to(e4m3).t()
        for n, w in {"qkv": wqkv, "kv": wkv, "w13": w13, "w2": w2}.items()
    }

    def mm(x, w, fast):
        return torch._scaled_mm(
            x, w, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=fast
        )

    rows, (M, D) = {}, a.shape
    for fast in (False, True):
        tag = "_fp8_fast" if fast else "_fp8"
        rows["qkv_fused_plus_text_kv" + tag] = (
            lambda f=fast: (mm(a8, w8["qkv"], f), mm(t8, w8["kv"], f)),
            2 * D * D * (3 * M + 2 * t.shape[0]),
        )
        rows["w13_fused" + tag] = (lambda f=fast: mm(a8, w8["w13"], f), 2 * M * D * w13.shape[1])
        rows["w2" + tag] = (lambda f=fast: mm(h8, w8["w2"], f), 2 * M * h.shape[1] * D)
    return rows


def attention(b: Bench) -> dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg, dev, bf16 = b.config.dit, b.device, torch.bfloat16
    heads, d, B = cfg.num_heads, cfg.width // cfg.num_heads, b.batch
    T_lat, S = b.config.max_frames, b.config.text.max_tokens
    q = torch.randn(B, heads, T_lat, d, device=dev, dtype=bf16)
    k = torch.randn(B, heads, T_lat + S, d, device=dev, dtype=bf16)
    v = torch.randn_like(k)
    mask = torch.ones(B, 1, 1, T_lat + S, dtype=torch.bool, device=dev)
    mask[..., T_lat + TEXT_KEPT :] = False  # audio keys all kept, text keys past the prompt masked
    flop = 4 * B * heads * T_lat * (T_lat + S) * d
    dp = export.padded_head_width(d)  # the exported graphs' head width (72 -> 80)
    qp, kp, vp = (F.pad(x, (0, dp - d)) for x in (q, k, v))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    cases = [
        ("efficient_mask", SDPBackend.EFFICIENT_ATTENTION, mask),
        ("cudnn_mask", SDPBackend.CUDNN_ATTENTION, mask),
        ("math_mask", SDPBackend.MATH, mask),
        ("flash_nomask", SDPBackend.FLASH_ATTENTION, None),
        ("cudnn_nomask", SDPBackend.CUDNN_ATTENTION, None),
        ("efficient_nomask", SDPBackend.EFFICIENT_ATTENTION, None),
        (f"flash_nomask_d{dp}", SDPBackend.FLASH_ATTENTION, "padded"),
        (f"cudnn_nomask_d{dp}", SDPBackend.CUDNN_ATTENTION, "padded"),
    ]
    out: dict[str, Any] = {
        "shape": {"batch": B, "heads": heads, "queries": T_lat, "keys": T_lat + S, "head_dim": d}
    }
    for name, backend, m in cases:
        if isinstance(m, str):  # the same FLOPs counted at d: the padding is overhead
            fn = lambda: F.scaled_dot_product_attention(qp, kp, vp, scale=d**-0.5)
            m = None
        else:
            fn = lambda m=m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        try:
            with sdpa_kernel([backend]):
                y = fn()
                row: dict[str, Any] = b.time_ms(fn)
        except RuntimeError as err:  # this backend refuses the head width, the mask or the GPU
            out[name] = {"refused": str(err).splitlines()[0][:200]}
            print(f"attn {name:<18} refused: {out[name]['refused']}", flush=True)
            continue
        row["tflops"] = flop / row["median_ms"] / 1e9
        row["rel_l2_vs_fp32"] = rel_l2(y, ref) if m is not None else None
        out[name] = row
        err = "" if m is None else f"  rel L2 vs fp32 {row['rel_l2_vs_fp32']:.2e}"
        print(
            f"attn {name:<18} {row['median_ms']:8.4f} ms {row['tflops']:8.1f} TFLOP/s{err}",
            flush=True,
        )
    return out


def dit_error(b: Bench) -> dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cpu_in = b.dit_inputs()
    gpu_in = tuple(t.to(b.device) for t in cpu_in)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    reduced = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            fp32 = b.model(torch.float32, b.device)
            ref = fp32.denoise(gpu_in[0], 1.0, *gpu_in[1:], budget=0).cpu()
            fp32.cpu()
            low = b.model(torch.bfloat16, "cpu")
            errors = {"cpu_bf16": rel_l2(low.denoise(cpu_in[0], 1.0, *cpu_in[1:], budget=0), ref)}
            low.to(b.device)
            run = lambda: low.denoise(gpu_in[0], 1.0, *gpu_in[1:], budget=0)
            errors["gpu_bf16_default"] = rel_l2(run(), ref)
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
            errors["gpu_bf16_no_reduced_reduction"] = rel_l2(run(), ref)
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = reduced
            with sdpa_kernel([SDPBackend.MATH]):
                errors["gpu_bf16_math_attention"] = rel_l2(run(), ref)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = reduced
    for name, err in errors.items():
        print(f"dit b0 {name:<30} rel L2 vs GPU fp32 {err:.3e}", flush=True)
    return {"rel_l2_vs_fp32": errors}


def dit_profile(b: Bench) -> dict[str, Any]:
    x, text, mask, bpm = (t.to(b.device) for t in b.dit_inputs())
    low = b.model(torch.bfloat16, b.device)
    with torch.no_grad():
        run = lambda: low.denoise(x, 1.0, text, mask, bpm, budget=0)
        out: dict[str, Any] = {"time": b.time_ms(run)}
        out["profile"] = profile_call(run, warmup=0, top=15)
    prof = out["profile"]
    print(
        f"dit b0 eager bf16 {out['time']['median_ms']:.2f} ms; {prof['kernel_ms']:.2f} ms of "
        f"kernels in {prof['launches']} launches",
        flush=True,
    )
    for name, c in prof["classes"].items():
        print(f"  {name:<12} {c['ms']:8.3f} ms {c['launches']:5d} launches {c['share']:6.1%}")
    return out


def convs(b: Bench) -> dict[str, Any]:
    cfg = b.config
    low = b.model(torch.bfloat16, b.device)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, cfg.dit.latent_channels, cfg.max_frames, generator=g).to(b.device)
    samples = cfg.max_frames * cfg.vae.hop_length
    mono = (AUDIO_SCALE * torch.randn(1, 1, samples, generator=g)).to(b.device)
    width = torch.ones(1, device=b.device)
    out: dict[str, Any] = {}
    old = torch.backends.cudnn.benchmark
    try:
        with torch.no_grad():
            for flag in (False, True):
                torch.backends.cudnn.benchmark = flag
                for name, fn in (
                    ("vae_decoder", lambda: low.decode(latents)),
                    ("stereo", lambda: low.to_stereo(mono, width)),
                ):
                    row = b.time_ms(fn)
                    out[f"{name}_cudnn_benchmark_{flag}"] = row
                    print(
                        f"eager bf16 {name:<12} cudnn.benchmark={flag!s:<5} "
                        f"{row['median_ms']:8.3f} ms",
                        flush=True,
                    )
    finally:
        torch.backends.cudnn.benchmark = old
    return out


# Triton launch settings the snake-conv part tries for the fused unit: (block_t, block_ci, warps,
# stages); the best is reported beside every one.
SNAKE_CONV_CONFIGS = ((128, 32, 4, 3), (128, 64, 8, 3), (64, 32, 4, 4), (256, 32, 8, 3))


def snake_conv(b: Bench) -> dict[str, Any]:
    """One residual unit of the VAE decoder's last block (C channels, kernel K, each dilation) at
    --batch takes of the longest duration, bf16 channels-last: Inductor's compiled unit (its Snake,
    bias and residual passes around cuDNN's convolutions, as the packages run it) against the
    Triton prototype with Snake in the convolutions (benchmarks/snake_conv.py)."""
    from benchmarks import snake_conv as sc

    if sc.triton is None:
        raise BackendUnavailable("the snake-conv part needs Triton (CUDA builds of torch have it)")
    vae = b.config.vae
    channels = vae.decoder_width // 2 ** len(vae.decoder_strides)
    samples = b.config.max_frames * vae.hop_length
    g = torch.Generator().manual_seed(0)
    x = (0.5 * torch.randn(b.batch, samples, channels, generator=g)).to(torch.bfloat16).to(b.device)
    flops = 2 * b.batch * samples * channels * channels * (vae.kernel_size + 1)
    out: dict[str, Any] = {"channels": channels, "samples": samples, "batch": b.batch}
    for dilation in vae.dilations:
        p = sc.unit_weights(channels, vae.kernel_size, torch.bfloat16, b.device, seed=dilation)
        args = (x, *p[:3], dilation, *p[3:])
        exact = sc.snake_unit_fp32(*args)
        with torch.no_grad():
            compiled = torch.compile(sc.snake_unit_reference, dynamic=False)
            runs = {"inductor": lambda f=compiled, a=args: f(*a)}
            for bt, bci, warps, stages in SNAKE_CONV_CONFIGS:
                kw = dict(block_t=bt, block_ci=bci, num_warps=warps, num_stages=stages)
                runs[f"fused_t{bt}_ci{bci}_w{warps}_s{stages}"] = lambda kw=kw, a=args: (
                    sc.snake_unit_fused(*a, **kw)
                )
            row: dict[str, Any] = {}
            for name, fn in runs.items():
                try:
                    timing = b.time_ms(fn)
                except Exception as err:  # a launch setting this GPU refuses: say so, try the rest
                    if name == "inductor":
                        raise
                    row[f"{name}_error"] = repr(err)[:300]
                    print(f"snake unit d={dilation} {name}: {err!r}"[:300], flush=True)
                    continue
                row[name] = {**timing, "tflops": flops / timing["median_ms"] / 1e9}
                row[name]["rel_l2_vs_fp32"] = rel_l2(fn(), exact)
        fused = [k for k in row if k.startswith("fused") and not k.endswith("_error")]
        if not fused:
            raise RuntimeError(f"no fused configuration ran at dilation {dilation}: {row}")
        best = min(fused, key=lambda k: row[k]["median_ms"])
        base = row["inductor"]["median_ms"]
        row["best_fused"], row["speedup"] = best, base / row[best]["median_ms"]
        out[f"dilation_{dilation}"] = row
        print(
            f"snake unit C={channels} T={samples} B={b.batch} d={dilation}: inductor "
            f"{base:8.3f} ms, fused {row[best]['median_ms']:8.3f} ms ({best}), "
            f"{row['speedup']:.2f}x; rel L2 vs fp32 {row['inductor']['rel_l2_vs_fp32']:.2e} / "
            f"{row[best]['rel_l2_vs_fp32']:.2e}",
            flush=True,
        )
    return out


PARTS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "gemm": gemm,
    "attention": attention,
    "dit-error": dit_error,
    "dit-profile": dit_profile,
    "convs": convs,
    "snake-conv": snake_conv,
}
