"""DAC / Improved-RVQGAN-style KL VAE with a 960-sample hop (paper A.1; DAC's conv stack).

audio (B, 1, T) at 44.1 kHz <-> latents (B, C_lat, T_lat), T = T_lat * hop_length. The bottleneck
is a diagonal Gaussian (stable-audio-tools' `vae_sample`) in place of DAC's residual quantiser.
Shape legend: B batch, C channels, T audio samples, T_lat latent frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presto_common.errors import InputError
from presto_ref.config import VAEConfig
from presto_ref.layers import (
    RESIDUAL_GAIN,
    Snake1d,
    downsample_conv,
    init_snake_,
    init_wn_conv_,
    upsample_conv,
    upsample_gain,
    wn_conv1d,
)

# std = softplus(scale) + STD_FLOOR, so the std never reaches 0 (stable-audio-tools vae_sample).
STD_FLOOR = 1e-4

# --- random-init scales ---------------------------------------------------------------------------
# A seeded random init must exercise every weight and keep activations near unit RMS through the
# stack, so that parity tests compare realistic signals (DESIGN.md section 2).
LATENT_RMS = 0.5  # latents come at EDM's sigma_data = 0.5, so the decoder's input conv has gain 2
AUDIO_RMS = 0.2  # about -14 dBFS, mastered music's loudness; the encoder's input conv has gain 5
DECODER_OUT_GAIN = 0.2  # pre-tanh RMS ~0.3-0.6 at init: audible, not tanh-saturated (measured)
ENCODER_OUT_GAIN = 0.2  # latent mean RMS ~0.5 = LATENT_RMS for noise at AUDIO_RMS (measured)


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return dilation * (kernel_size - 1) // 2


# --- blocks ---------------------------------------------------------------------------------------


class ResidualUnit(nn.Module):
    """x + conv_1(snake(conv_k,d(snake(x)))) at constant width and length; x: (B, C, T)."""

    def __init__(self, channels: int, dilation: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.snake1 = Snake1d(channels)
        self.conv1 = wn_conv1d(
            channels,
            channels,
            kernel_size,
            dilation=dilation,
            padding=_same_padding(kernel_size, dilation),
        )
        self.snake2 = Snake1d(channels)
        self.conv2 = wn_conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.snake2(self.conv1(self.snake1(x))))
        return x + y

    def init_random(self, generator: torch.Generator) -> None:
        init_snake_(self.snake1, generator)
        init_wn_conv_(self.conv1, generator)
        init_snake_(self.snake2, generator)
        init_wn_conv_(self.conv2, generator, gain=RESIDUAL_GAIN)


class EncoderBlock(nn.Module):
    """Residual units at C, Snake, strided conv to 2C: (B, C, T) -> (B, 2C, T / stride)."""

    def __init__(
        self, channels: int, stride: int, dilations: tuple[int, ...], kernel_size: int
    ) -> None:
        super().__init__()
        self.units = nn.Sequential(*(ResidualUnit(channels, d, kernel_size) for d in dilations))
        self.snake = Snake1d(channels)
        self.down = downsample_conv(channels, 2 * channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.snake(self.units(x)))

    def init_random(self, generator: torch.Generator) -> None:
        for unit in self.units:
            unit.init_random(generator)
        init_snake_(self.snake, generator)
        init_wn_conv_(self.down, generator)  # an ordinary conv: row norm 1 keeps the variance


class DecoderBlock(nn.Module):
    """Snake, transposed conv to C/2, residual units: (B, C, T) -> (B, C/2, T * stride)."""

    def __init__(
        self, channels: int, stride: int, dilations: tuple[int, ...], kernel_size: int
    ) -> None:
        super().__init__()
        self.stride = stride
        self.snake = Snake1d(channels)
        self.up = upsample_conv(channels, channels // 2, stride)
        self.units = nn.Sequential(
            *(ResidualUnit(channels // 2, d, kernel_size) for d in dilations)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.units(self.up(self.snake(x)))

    def init_random(self, generator: torch.Generator) -> None:
        c_in = self.snake.alpha.shape[1]
        init_snake_(self.snake, generator)
        init_wn_conv_(self.up, generator, gain=upsample_gain(c_in, c_in // 2, self.stride))
        for unit in self.units:
            unit.init_random(generator)


# --- encoder and decoder -------------------------------------------------------------------------


class VAEEncoder(nn.Module):
    """audio (B, 1, T) -> posterior mean and std, each (B, C_lat, T / hop_length)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.hop_length = cfg.hop_length
        k = cfg.kernel_size
        self.conv_in = wn_conv1d(1, cfg.encoder_width, k, padding=_same_padding(k))
        widths = [cfg.encoder_width * 2**i for i in range(len(cfg.encoder_strides))]
        self.blocks = nn.Sequential(
            *(
                EncoderBlock(c, s, cfg.dilations, k)
                for c, s in zip(widths, cfg.encoder_strides, strict=True)
            )
        )
        c_last = 2 * widths[-1]
        self.snake_out = Snake1d(c_last)
        self.conv_out = wn_conv1d(c_last, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise InputError(
                f"VAE encoder input has shape {tuple(audio.shape)}; expected (B, 1, T) mono"
            )
        num_samples = audio.shape[-1]
        # A plain int check: eager shapes are ints, and torch.export turns it into a guard.
        if num_samples % self.hop_length != 0:
            raise InputError(
                f"audio length T={num_samples} samples is not a multiple of the VAE hop "
                f"{self.hop_length}; pad or trim it to a multiple of {self.hop_length} samples"
            )
        h = self.blocks(self.conv_in(audio))  # (B, C_last, T_lat)
        mean, scale = self.conv_out(self.snake_out(h)).chunk(2, dim=1)  # (B, C_lat, T_lat) each
        std = F.softplus(scale) + STD_FLOOR
        return mean, std

    def init_random(self, generator: torch.Generator) -> None:
        init_wn_conv_(self.conv_in, generator, gain=1.0 / AUDIO_RMS)
        for block in self.blocks:
            block.init_random(generator)
        init_snake_(self.snake_out, generator)
        init_wn_conv_(self.conv_out, generator, gain=ENCODER_OUT_GAIN)


class VAEDecoder(nn.Module):
    """latents (B, C_lat, T_lat) -> audio (B, 1, T_lat * hop_length) in [-1, 1]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.latent_channels = cfg.latent_channels
        k = cfg.kernel_size
        self.conv_in = wn_conv1d(
            cfg.latent_channels, cfg.decoder_width, k, padding=_same_padding(k)
        )
        widths = [cfg.decoder_width // 2**i for i in range(len(cfg.decoder_strides))]
        self.blocks = nn.Sequential(
            *(
                DecoderBlock(c, s, cfg.dilations, k)
                for c, s in zip(widths, cfg.decoder_strides, strict=True)
            )
        )
        c_last = widths[-1] // 2
        self.snake_out = Snake1d(c_last)
        self.conv_out = wn_conv1d(c_last, 1, k, padding=_same_padding(k))

    def forward(self, latents: Tensor) -> Tensor:
        if latents.dim() != 3 or latents.shape[1] != self.latent_channels:
            raise InputError(
                f"VAE decoder input has shape {tuple(latents.shape)}; expected "
                f"(B, {self.latent_channels}, T_lat)"
            )
        h = self.blocks(self.conv_in(latents))  # (B, C_last, T)
        return torch.tanh(self.conv_out(self.snake_out(h)))  # (B, 1, T)

    def init_random(self, generator: torch.Generator) -> None:
        init_wn_conv_(self.conv_in, generator, gain=1.0 / LATENT_RMS)
        for block in self.blocks:
            block.init_random(generator)
        init_snake_(self.snake_out, generator)
        init_wn_conv_(self.conv_out, generator, gain=DECODER_OUT_GAIN)


# --- the VAE -------------------------------------------------------------------------------------


class VAE(nn.Module):
    """Encoder and decoder of the KL VAE; `encode` and `decode` are the public entry points."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = VAEEncoder(cfg)
        self.decoder = VAEDecoder(cfg)

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    def encode(self, audio: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """audio (B, 1, T), T a multiple of hop_length -> latents (B, C_lat, T / hop_length).

        With no generator, returns the posterior mean. Otherwise returns mean + std * noise, the
        noise drawn on the CPU from `generator` (a CPU generator), so that a seed gives the same
        latents on any device.
        """
        mean, std = self.encoder(audio)
        if generator is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
        return mean + std * noise.to(device=mean.device, dtype=mean.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        """latents (B, C_lat, T_lat) -> audio (B, 1, T_lat * hop_length)."""
        return self.decoder(latents)

    def init_random(self, generator: torch.Generator) -> None:
        """Fill every parameter in place with seeded random values (scales: the constants above)."""
        self.encoder.init_random(generator)
        self.decoder.init_random(generator)
