"""Closed-form FLOPs of each stage from a model config dict (notes/architecture.md, section 7).

The config is the manifest's `config`, as `presto_ref.config.PrestoConfig.to_dict()` writes it, so
this module needs neither torch nor presto_ref. FLOPs are 2 x multiply-accumulates of the matmuls and
convolutions (biases excluded), plus the two attention products Q K^T and A V. Elementwise work
(norms, softmax, Snake, SiLU, rotary, weight norm, masks) is not counted, as in
torch.utils.flop_counter, against which tests/benchmarks/test_flops.py checks these formulas.

Shapes: B batch, T_lat latent frames, S text tokens (max_tokens), D widths. For presto-ls at 32 s
(1470 frames), batch 1: one full-depth DiT forward is 1.634 TFLOP, as in the notes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Config = Mapping[str, Any]


def _linear(rows: int, d_in: int, d_out: int) -> int:
    """A matmul of (rows, d_in) by (d_in, d_out)."""
    return 2 * rows * d_in * d_out


def _conv(batch: int, t_out: int, c_in: int, c_out: int, kernel: int) -> int:
    """A Conv1d producing t_out positions (dilation and stride do not change the count)."""
    return 2 * batch * t_out * c_in * c_out * kernel


def _conv_transpose(batch: int, t_in: int, c_in: int, c_out: int, kernel: int) -> int:
    """A ConvTranspose1d over t_in input positions: every input tap meets the whole kernel."""
    return 2 * batch * t_in * c_in * c_out * kernel


def _attention(batch: int, heads: int, queries: int, keys: int, head_dim: int) -> int:
    """Q K^T and A V."""
    return 2 * 2 * batch * heads * queries * keys * head_dim


# --- stages ---------------------------------------------------------------------------------------


def text_encoder_flops(config: Config, batch: int) -> int:
    """T5 encoder over max_tokens tokens per prompt (the runtime always runs the padded length)."""
    t = config["text"]
    S, D, inner = t["max_tokens"], t["d_model"], t["num_heads"] * t["d_kv"]
    rows = batch * S
    per_layer = (
        3 * _linear(rows, D, inner)  # q, k, v
        + _linear(rows, inner, D)  # o
        + _attention(batch, t["num_heads"], S, S, t["d_kv"])
        + _linear(rows, D, t["d_ff"])
        + _linear(rows, t["d_ff"], D)
    )
    return t["num_layers"] * per_layer


def dit_flops(config: Config, batch: int, frames: int, budget: int = 0) -> int:
    """One DiT forward at `budget` (num_blocks - budget blocks run) over `frames` audio tokens."""
    d, S = config["dit"], config["text"]["max_tokens"]
    D, C, F = d["width"], d["latent_channels"], d["ffn_hidden"]
    blocks = d["num_blocks"] - budget
    if not 0 <= budget < d["num_blocks"]:
        raise ValueError(f"budget={budget} must be in 0..{d['num_blocks'] - 1}")
    T, L = frames, frames + S  # queries from audio; keys and values from [audio; text]
    per_block = (
        _linear(batch * T, D, D)  # q
        + 2 * _linear(batch * L, D, D)  # k, v
        + _linear(batch * T, D, D)  # o
        + _attention(batch, d["num_heads"], T, L, D // d["num_heads"])
        + 3 * _linear(batch * T, D, F)  # SwiGLU w1, w3, w2
        + _linear(batch, D, 6 * D)  # adaLN on the conditioning vector
    )
    embedders = 3 * (_linear(batch, d["freq_dim"], D) + _linear(batch, D, D))  # noise, BPM, budget
    edges = (
        _linear(batch * T, C, D)  # proj_in
        + _linear(batch * S, d["text_width"], D)  # text_proj
        + 2 * _linear(batch, D, 2 * D)  # budget adaLN, final adaLN
        + _linear(batch * T, D, C)  # proj_out
    )
    return blocks * per_block + embedders + edges


def vae_decoder_flops(config: Config, batch: int, frames: int) -> int:
    """DAC-style decoder: latents (B, C_lat, T_lat) -> audio (B, 1, T_lat * hop)."""
    v = config["vae"]
    k, c, t = v["kernel_size"], v["decoder_width"], frames
    total = _conv(batch, t, v["latent_channels"], c, k)  # conv_in
    for stride in v["decoder_strides"]:
        total += _conv_transpose(batch, t, c, c // 2, 2 * stride)
        c, t = c // 2, t * stride
        # one residual unit per dilation: conv k (dilated) then conv 1, both at c -> c
        total += len(v["dilations"]) * (_conv(batch, t, c, c, k) + _conv(batch, t, c, c, 1))
    return total + _conv(batch, t, c, 1, k)  # conv_out


def stereo_flops(config: Config, batch: int, frames: int) -> int:
    """Mono-to-stereo: STFT-as-conv and mel matmul, then the BigVGAN-style side generator."""
    s = config["stereo"]
    samples = frames * vae_hop(config)
    t = samples // s["hop_length"]  # mel frames
    bins = s["n_fft"] // 2 + 1
    total = _conv(batch, t, 1, 2 * bins, s["n_fft"])  # STFT bases (real and imaginary rows)
    total += 2 * batch * s["num_mels"] * bins * t  # mel filterbank
    edge = 7  # conv_pre and conv_post kernel (presto_ref.stereo.EDGE_KERNEL)
    c = s["width"]
    total += _conv(batch, t, s["num_mels"], c, edge)  # conv_pre
    for rate in s["upsample_rates"]:
        total += _conv_transpose(batch, t, c, c // 2, 2 * rate)
        c, t = c // 2, t * rate
        for kernel in s["resblock_kernels"]:  # AMPBlock: two convs of `kernel` per dilation
            total += len(s["resblock_dilations"]) * 2 * _conv(batch, t, c, c, kernel)
    return total + _conv(batch, t, c, 1, edge)  # conv_post


def vae_hop(config: Config) -> int:
    """Audio samples per latent frame."""
    hop = 1
    for stride in config["vae"]["decoder_strides"]:
        hop *= stride
    return hop


def pipeline_flops(
    config: Config, batch: int, frames: int, step_budgets: Sequence[int]
) -> dict[str, int]:
    """FLOPs per stage of one generation: one DiT forward per step at that step's budget."""
    text = text_encoder_flops(config, batch)
    dit = sum(dit_flops(config, batch, frames, b) for b in step_budgets)
    vae = vae_decoder_flops(config, batch, frames)
    stereo = stereo_flops(config, batch, frames)
    return {
        "text_encoder": text,
        "dit_steps": dit,
        "vae_decoder": vae,
        "stereo": stereo,
        "e2e_mono": text + dit + vae,
        "e2e_stereo": text + dit + vae + stereo,
    }
