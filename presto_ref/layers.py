"""Small building blocks shared by the models: norms, sinusoids, rotary positions, Snake, WN convs.

Shape legend (see `presto_ref/__init__.py`): B batch, C channels, T samples or frames, D width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

# --- embeddings ---------------------------------------------------------------------------------


def sinusoidal_embedding(x: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of scalars x: (B,) -> (B, dim) float32, [cos | sin] halves (DiT order).

    Frequencies run geometrically from 1 down to 1/max_period; computed in fp32 whatever x's dtype.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half
    )
    args = x.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ScalarEmbedder(nn.Module):
    """Scalar -> sinusoid -> Linear -> SiLU -> Linear: (B,) -> (B, D) (DiT's timestep embedder)."""

    def __init__(self, freq_dim: int, width: int, scale: float = 1.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.scale = scale  # multiplies the scalar before the sinusoid
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, x: Tensor) -> Tensor:
        emb = sinusoidal_embedding(x.float() * self.scale, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


# --- normalisation ------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / rms(x) over the last axis, statistics in fp32, optionally times a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.to(x.dtype)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift, with x: (B, T, D) and shift, scale: (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


# --- rotary positions ---------------------------------------------------------------------------


def rotary_angles(num_positions: int, head_dim: int, theta: float, device: torch.device) -> Tensor:
    """Rotation angles (T, head_dim / 2) in fp32 for positions 0..T-1 (RoFormer / Llama)."""
    inv_freq = theta ** (
        -torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    )
    positions = torch.arange(num_positions, dtype=torch.float32, device=device)
    return positions[:, None] * inv_freq[None]


def rotary_tables(angles: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin of rotary angles (T, d/2), each (T, d/2) in the angles' dtype (fp32)."""
    return torch.cos(angles), torch.sin(angles)


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive channel pairs of x: (B, H, T, d) by the angles whose cos and sin (T, d/2)
    are given; math in fp32, result in x's dtype."""
    xf = x.float().unflatten(-1, (-1, 2))
    cos, sin = cos[:, :, None], sin[:, :, None]  # (T, d/2, 1)
    x0, x1 = xf[..., :1], xf[..., 1:]
    out = torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def apply_rotary(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate consecutive channel pairs of x: (B, H, T, d) by angles: (T, d/2); math in fp32."""
    return rotate_pairs(x, *rotary_tables(angles))


# --- audio convolutions -------------------------------------------------------------------------


class Snake1d(nn.Module):
    """Snake activation x + sin^2(alpha x) / alpha with one alpha per channel; x: (B, C, T)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.alpha.to(x.dtype)
        # The 1e-9 keeps a channel whose alpha reached 0 finite, as in DAC.
        return x + torch.sin(alpha * x).pow(2) / (alpha + 1e-9)


def wn_conv1d(*args, **kwargs) -> nn.Module:
    """A weight-normalised Conv1d (parametrised: weight = g * v / ||v||, per output channel)."""
    return weight_norm(nn.Conv1d(*args, **kwargs))


def wn_conv_transpose1d(*args, **kwargs) -> nn.Module:
    """A weight-normalised ConvTranspose1d."""
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


def upsample_conv(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """WN transposed conv that turns T frames into exactly T * stride (kernel 2 * stride).

    padding ceil(stride / 2) and output_padding stride % 2 make odd strides exact too, so
    1470 latent frames decode to exactly 1,411,200 samples.
    """
    return wn_conv_transpose1d(
        in_channels,
        out_channels,
        kernel_size=2 * stride,
        stride=stride,
        padding=math.ceil(stride / 2),
        output_padding=stride % 2,
    )


def downsample_conv(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """WN strided conv that turns T samples (a multiple of stride) into exactly T / stride."""
    return wn_conv1d(
        in_channels,
        out_channels,
        kernel_size=2 * stride,
        stride=stride,
        padding=math.ceil(stride / 2),
    )


# --- random initialisation ----------------------------------------------------------------------


def randn_like_(param: Tensor, generator: torch.Generator, std: float, mean: float = 0.0) -> None:
    """Fill `param` in place with N(mean, std^2) drawn on the CPU from `generator` (device-independent)."""
    with torch.no_grad():
        values = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std + mean
        param.copy_(values.to(param.dtype))


def init_wn_conv_(conv: nn.Module, generator: torch.Generator, gain: float = 1.0) -> None:
    """Random init of a weight-normed conv: directions N(0, 1), norms gain * (1 +- 10%), bias N(0, 0.02).

    For a Conv1d the norm is per output channel over its whole fan-in, so gain 1 keeps the variance
    of unit-variance, uncorrelated input. For a ConvTranspose1d it is per input channel: use
    `upsample_gain`.
    """
    p = conv.parametrizations.weight
    v, g = p.original1, p.original0
    randn_like_(v, generator, 1.0)
    randn_like_(g, generator, 0.1 * gain, mean=gain)
    if conv.bias is not None:
        randn_like_(conv.bias, generator, 0.02)


# DAC and BigVGAN init Snake alphas to 1; alpha ~ N(1, 0.1^2) makes every channel differ.
SNAKE_ALPHA_SPREAD = 0.1
# Row norm of a residual branch's last conv: a unit adds ~15% variance (a block ~1.3x RMS), not 2x.
RESIDUAL_GAIN = 0.3


def init_snake_(snake: Snake1d, generator: torch.Generator) -> None:
    """Random Snake alphas around 1 (every alpha nonzero, each channel slightly different)."""
    randn_like_(snake.alpha, generator, SNAKE_ALPHA_SPREAD, mean=1.0)


def upsample_gain(in_channels: int, out_channels: int, stride: int) -> float:
    """Weight-norm gain g of `upsample_conv` that keeps the RMS of unit-variance input.

    weight_norm on ConvTranspose1d normalises dim 0, which is the INPUT channel: each of the C_in
    rows of shape (C_out, 2 * stride) has norm g, so a weight has variance g^2 / (C_out * 2 stride).
    Each output sample sums C_in channels times 2 overlapping taps, so its variance is
    g^2 * C_in / (C_out * stride); g = sqrt(stride * C_out / C_in) makes it 1. (A Conv1d's weight
    norm is per OUTPUT channel over its whole fan-in, so there g = 1 keeps the variance.)
    """
    return math.sqrt(stride * out_channels / in_channels)
