"""Frozen configs of the four networks' architectures: text encoder, DiT, VAE and mono-to-stereo.

Each field says its meaning and unit. `__post_init__` checks the invariants and raises `ConfigError`
naming the field, the value and what was expected. `presto_ref.config` bundles them with the EDM and
sampler configs in `PrestoConfig`, and they can be imported from there too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from presto_common.errors import ConfigError

SAMPLE_RATE = 44_100  # Hz; the paper's audio rate (section 4.1)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive(name: str, value: float) -> None:
    _check(value > 0, f"{name}={value!r} must be positive")


# --- text encoder ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderConfig:
    """T5 encoder (t5-base size by default) and its tokenizer."""

    vocab_size: int = 32_128  # token ids; t5-base's vocabulary, >= 259 for the byte tokenizer
    d_model: int = 768  # width of the output tokens
    num_layers: int = 12
    num_heads: int = 12
    d_kv: int = 64  # width per head
    d_ff: int = 3072  # ReLU feed-forward width
    num_buckets: int = 32  # relative-position buckets (T5)
    max_distance: int = 128  # tokens; relative distances beyond this share the last bucket
    max_tokens: int = 128  # tokens per prompt including the closing EOS; longer prompts are refused
    eps: float = 1e-6  # RMS norm epsilon
    tokenizer: Literal["byte"] = "byte"  # ByT5-style byte ids: byte + 3 (0 pad, 1 EOS, 2 unknown)

    def __post_init__(self) -> None:
        for name in ("d_model", "num_layers", "num_heads", "d_kv", "d_ff", "num_buckets"):
            _positive(f"text.{name}", getattr(self, name))
        _check(
            self.vocab_size >= 259,
            f"text.vocab_size={self.vocab_size} must be >= 259 to hold byte ids",
        )
        _check(
            self.max_tokens >= 2,
            f"text.max_tokens={self.max_tokens} must be >= 2 (a token and EOS)",
        )
        _check(
            self.tokenizer == "byte", f"text.tokenizer={self.tokenizer!r}; only 'byte' is supported"
        )
        _positive("text.eps", self.eps)
        # T5's bucket maths divides by num_buckets // 4 and log(max_distance / (num_buckets // 4)).
        _check(
            self.num_buckets >= 4 and self.max_distance > self.num_buckets // 4,
            f"text.num_buckets={self.num_buckets}, text.max_distance={self.max_distance}: need "
            "num_buckets >= 4 and max_distance > num_buckets // 4 (t5-base: 32 and 128)",
        )


# --- diffusion transformer ------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig:
    """Llama-style DiT over latent frames (paper appendix A.1), DiT-XL scale by default."""

    num_blocks: int = 28  # N; each block is one attention then one SwiGLU feed-forward
    width: int = 1152  # D
    num_heads: int = 16  # head width D / num_heads = 72
    latent_channels: int = 32  # C_lat; must equal the VAE's
    ffn_hidden: int = 3072  # SwiGLU hidden width; int(2/3 * 4 * D) keeps the FLOPs of a 4x GELU MLP
    text_width: int = 768  # width of the text encoder's tokens; must equal text.d_model
    freq_dim: int = 256  # size of the sinusoidal embeddings of log-sigma, BPM and budget
    noise_embed_scale: float = 1000.0  # c_noise = ln(sigma)/4 is multiplied by this before the
    # sinusoid, so its range (about 2.6 units) spans the phases DiT's 0..1000 timesteps do
    rope_theta: float = 10_000.0  # rotary base for audio positions
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in (
            "num_blocks",
            "width",
            "num_heads",
            "latent_channels",
            "ffn_hidden",
            "text_width",
        ):
            _positive(f"dit.{name}", getattr(self, name))
        _check(
            self.width % self.num_heads == 0,
            f"dit.width={self.width} must be divisible by dit.num_heads={self.num_heads}",
        )
        _check(
            self.head_dim % 2 == 0,
            f"dit head width {self.head_dim} must be even for rotary positions",
        )
        _check(self.freq_dim % 2 == 0, f"dit.freq_dim={self.freq_dim} must be even")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


# --- VAE -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    """DAC-style KL VAE (paper A.1): weight-normed convs, Snake, residual units, hop 960."""

    latent_channels: int = 32  # C_lat of the KL bottleneck
    encoder_width: int = 64  # channels after the encoder's first conv; doubled at each stride
    encoder_strides: tuple[int, ...] = (4, 5, 6, 8)  # product is the hop (960 samples)
    decoder_width: int = 1536  # channels after the decoder's first conv; halved at each stride
    decoder_strides: tuple[int, ...] = (8, 6, 5, 4)  # mirror of the encoder's
    dilations: tuple[int, ...] = (1, 3, 9)  # one residual unit per dilation in every block
    kernel_size: int = 7  # residual-unit and edge conv kernel

    def __post_init__(self) -> None:
        for name in ("latent_channels", "encoder_width", "decoder_width", "kernel_size"):
            _positive(f"vae.{name}", getattr(self, name))
        _check(
            all(s >= 1 for s in self.encoder_strides + self.decoder_strides),
            "vae strides must be >= 1",
        )
        _check(
            self.kernel_size % 2 == 1,
            f"vae.kernel_size={self.kernel_size} must be odd ('same' padding)",
        )
        _check(
            len(self.dilations) >= 1 and all(d >= 1 for d in self.dilations),
            f"vae.dilations={self.dilations} must be one or more positive dilations",
        )
        _check(
            math.prod(self.encoder_strides) == math.prod(self.decoder_strides),
            f"vae.encoder_strides={self.encoder_strides} and vae.decoder_strides="
            f"{self.decoder_strides} must have the same product (the hop)",
        )
        _check(
            self.decoder_width % 2 ** len(self.decoder_strides) == 0,
            f"vae.decoder_width={self.decoder_width} must be divisible by 2^{len(self.decoder_strides)}",
        )

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return math.prod(self.decoder_strides)


# --- mono to stereo -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StereoConfig:
    """MusicHiFi-style mono-to-stereo: a BigVGAN-style generator predicts the side from the mid's mel."""

    n_fft: int = 1024  # samples per STFT frame of the mel front end
    hop_length: int = 240  # samples between mel frames; must divide the VAE hop
    num_mels: int = 128
    f_min: float = 0.0  # Hz
    f_max: float = 22_050.0  # Hz
    width: int = 512  # channels after conv_pre; halved at each upsampling stage
    upsample_rates: tuple[int, ...] = (8, 5, 3, 2)  # product equals hop_length
    resblock_kernels: tuple[int, ...] = (3, 7, 11)  # one multi-receptive-field branch per kernel
    resblock_dilations: tuple[int, ...] = (1, 3, 5)

    def __post_init__(self) -> None:
        for name in ("n_fft", "hop_length", "num_mels", "width"):
            _positive(f"stereo.{name}", getattr(self, name))
        _check(
            math.prod(self.upsample_rates) == self.hop_length,
            f"stereo.upsample_rates={self.upsample_rates} multiply to "
            f"{math.prod(self.upsample_rates)}, expected stereo.hop_length={self.hop_length}",
        )
        _check(
            self.n_fft >= self.hop_length and (self.n_fft - self.hop_length) % 2 == 0,
            f"stereo.n_fft={self.n_fft} must be >= hop_length={self.hop_length} with an even difference",
        )
        _check(
            self.width % 2 ** len(self.upsample_rates) == 0,
            f"stereo.width={self.width} must be divisible by 2^{len(self.upsample_rates)}",
        )
        _check(
            len(self.resblock_kernels) >= 1 and all(k % 2 == 1 for k in self.resblock_kernels),
            f"stereo.resblock_kernels={self.resblock_kernels} must be one or more odd kernels",
        )
        _check(
            len(self.resblock_dilations) >= 1 and all(d >= 1 for d in self.resblock_dilations),
            f"stereo.resblock_dilations={self.resblock_dilations} must be one or more positive "
            "dilations",
        )
        _check(
            0 <= self.f_min < self.f_max <= SAMPLE_RATE / 2,
            f"stereo f_min={self.f_min}, f_max={self.f_max} must satisfy 0 <= f_min < f_max <= "
            f"{SAMPLE_RATE / 2}",
        )
