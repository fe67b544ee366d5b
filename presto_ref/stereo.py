"""MusicHiFi-style mono-to-stereo: a BigVGAN-style generator predicts the side signal from the mid.

left = mid + width * side, right = mid - width * side, so the downmix (left + right) / 2 is the
input mono by construction (MusicHiFi's "downmix-compatible" upmixer, arXiv 2403.10493). MusicHiFi's
exact generator is unpublished; this is BigVGAN's generator (mel in, waveform out) without
anti-aliasing.
Shape legend: B batch, C channels, T audio samples (44.1 kHz), T_mel = T / hop_length frames,
F = n_fft / 2 + 1 STFT bins, M mel bands.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presto_common.errors import InputError
from presto_ref.config import StereoConfig
from presto_ref.layers import (
    RESIDUAL_GAIN,
    Snake1d,
    init_snake_,
    init_wn_conv_,
    upsample_conv,
    upsample_gain,
    wn_conv1d,
)

MAGNITUDE_EPS = 1e-9  # inside sqrt(re^2 + im^2 + eps): a finite gradient at silence (BigVGAN's mel)
LOG_FLOOR = 1e-5  # log(clamp(mel, min=1e-5)): HiFi-GAN/BigVGAN dynamic_range_compression clip_val
EDGE_KERNEL = 7  # kernel of conv_pre and conv_post (HiFi-GAN / BigVGAN)

# Slaney's mel scale (Auditory Toolbox, 1998; librosa's default): linear below 1 kHz, log above.
SLANEY_HZ_PER_MEL = 200.0 / 3.0  # slope of the linear part
SLANEY_BREAK_HZ = 1000.0  # where the scale turns logarithmic
SLANEY_LOG_STEP = math.log(6.4) / 27.0  # log-Hz per mel above the break (27 mels per 6.4x)

# --- random-init scales (presto_ref/vae.py holds the shared Snake and residual scales) -----------
# Log-mel RMS of pink noise at -14 dBFS measures 3.0-3.8; music rolls off faster above 10 kHz.
LOG_MEL_RMS = 4.0
SIDE_OUT_GAIN = 0.05  # pre-tanh side RMS ~0.1 at init, ~6 dB under a -14 dBFS mid (measured)


# --- mel front end ------------------------------------------------------------------------------


def hz_to_mel(freq_hz: Tensor) -> Tensor:
    """Slaney mel of frequencies in Hz (any shape).

    >>> round(float(hz_to_mel(torch.tensor(1000.0))), 4)
    15.0
    """
    linear = freq_hz / SLANEY_HZ_PER_MEL
    break_mel = SLANEY_BREAK_HZ / SLANEY_HZ_PER_MEL
    log_ratio = torch.log(freq_hz.clamp(min=SLANEY_BREAK_HZ) / SLANEY_BREAK_HZ)
    log = break_mel + log_ratio / SLANEY_LOG_STEP
    return torch.where(freq_hz >= SLANEY_BREAK_HZ, log, linear)


def mel_to_hz(mel: Tensor) -> Tensor:
    """Inverse of `hz_to_mel`."""
    break_mel = SLANEY_BREAK_HZ / SLANEY_HZ_PER_MEL
    log = SLANEY_BREAK_HZ * torch.exp(SLANEY_LOG_STEP * (mel - break_mel))
    return torch.where(mel >= break_mel, log, mel * SLANEY_HZ_PER_MEL)


def mel_filterbank(
    num_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float
) -> Tensor:
    """Triangular Slaney-normalised mel filters (M, n_fft // 2 + 1), float64 (librosa's defaults).

    Band m rises from edge m to a peak at edge m + 1 and falls to edge m + 2, the num_mels + 2 edges
    being equally spaced in mel from f_min to f_max. Each triangle is scaled by 2 / (width in Hz),
    i.e. to unit area in Hz, so that wide high bands do not dominate.
    """
    fft_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_range = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64))
    edges_hz = mel_to_hz(
        torch.linspace(0.0, 1.0, num_mels + 2, dtype=torch.float64) * (mel_range[1] - mel_range[0])
        + mel_range[0]
    )
    lower, center, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz[None] - lower) / (center - lower)
    falling = (upper - fft_hz[None]) / (upper - center)
    weights = torch.minimum(rising, falling).clamp(min=0.0)
    return weights * (2.0 / (upper - lower))


def stft_bases(n_fft: int) -> Tensor:
    """Hann-windowed DFT kernels (2F, 1, n_fft), float64: F real rows then F imaginary rows.

    conv1d with these at stride hop_length equals torch.stft(center=False, periodic Hann window).
    """
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    # (k * n) mod n_fft keeps the angles small, so the high bins are as exact as the low ones.
    angle = 2 * math.pi * torch.remainder(k[:, None] * n[None], n_fft) / n_fft
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    real, imag = torch.cos(angle) * window, -torch.sin(angle) * window
    return torch.cat([real, imag])[:, None, :]


def _check_mono(audio: Tensor, hop_length: int, what: str) -> None:
    # Plain int checks: eager shapes are ints, and torch.export turns them into guards.
    if audio.dim() != 3 or audio.shape[1] != 1:
        raise InputError(f"{what} input has shape {tuple(audio.shape)}; expected (B, 1, T) mono")
    num_samples = audio.shape[-1]
    if num_samples % hop_length != 0:
        raise InputError(
            f"{what}: audio length T={num_samples} samples is not a multiple of the mel hop "
            f"{hop_length}; pad or trim it to a multiple of {hop_length} samples"
        )


class MelFrontEnd(nn.Module):
    """audio (B, 1, T) -> log-mel (B, M, T / hop_length); the STFT is a conv (exports cleanly).

    The input is reflect-padded by (n_fft - hop_length) / 2 on both sides, so frame i is centred on
    samples [i * hop, (i + 1) * hop). Bases and filterbank are buffers derived from the config and
    are not saved in checkpoints. The front end is an fp32 island: it computes in fp32 whatever
    dtype the model is cast to (a bf16 STFT of a 1024-sample window loses the quiet bands), and
    returns the log-mel in the input's dtype.
    """

    def __init__(self, cfg: StereoConfig, sample_rate: int) -> None:
        super().__init__()
        self.n_fft = cfg.n_fft
        self.hop_length = cfg.hop_length
        self.num_bins = cfg.n_fft // 2 + 1
        fbank = mel_filterbank(cfg.num_mels, cfg.n_fft, sample_rate, cfg.f_min, cfg.f_max)
        self.register_buffer("bases", stft_bases(cfg.n_fft).float(), persistent=False)
        self.register_buffer("fbank", fbank.float(), persistent=False)

    def magnitude(self, audio: Tensor) -> Tensor:
        """|STFT| (B, F, T / hop_length) of audio (B, 1, T)."""
        _check_mono(audio, self.hop_length, "mel front end")
        pad = (self.n_fft - self.hop_length) // 2
        if audio.shape[-1] <= pad:  # reflect padding needs more samples than it pads
            raise InputError(
                f"mel front end: audio length T={audio.shape[-1]} samples is too short; reflect "
                f"padding by {pad} needs T > {pad}; pass at least "
                f"{(pad // self.hop_length + 1) * self.hop_length} samples"
            )
        padded = F.pad(audio.float(), (pad, pad), mode="reflect")  # (B, 1, T + n_fft - hop)
        spec = F.conv1d(padded, self.bases, stride=self.hop_length)  # (B, 2F, T / hop)
        real, imag = spec[:, : self.num_bins], spec[:, self.num_bins :]
        return torch.sqrt(real.pow(2) + imag.pow(2) + MAGNITUDE_EPS)

    def forward(self, audio: Tensor) -> Tensor:
        mel = torch.matmul(self.fbank, self.magnitude(audio))  # (B, M, T / hop) fp32
        return torch.log(torch.clamp(mel, min=LOG_FLOOR)).to(audio.dtype)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        # Model-wide casts (.to(bf16), .half()) must not round the fixed bases: keep their fp32
        # values and follow only device moves.
        bases, fbank = self.bases, self.fbank
        super()._apply(fn, recurse)
        self.bases = bases.to(self.bases.device)
        self.fbank = fbank.to(self.fbank.device)
        return self


# --- generator ------------------------------------------------------------------------------------


class AMPBlock(nn.Module):
    """BigVGAN AMPBlock1: per dilation d, x = x + conv_k,1(snake(conv_k,d(snake(x)))); (B, C, T).

    Deviation (named): BigVGAN wraps each Snake in an anti-aliased activation (2x upsample, Snake,
    2x downsample with Kaiser-sinc filters). It is left out: MusicHiFi's exact generator is
    unpublished, and plain Snake keeps the exported graph to convolutions and pointwise ops.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.acts1 = nn.ModuleList(Snake1d(channels) for _ in dilations)
        self.convs1 = nn.ModuleList(
            wn_conv1d(
                channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2
            )
            for d in dilations
        )
        self.acts2 = nn.ModuleList(Snake1d(channels) for _ in dilations)
        self.convs2 = nn.ModuleList(
            wn_conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
            for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for act1, conv1, act2, conv2 in zip(
            self.acts1, self.convs1, self.acts2, self.convs2, strict=True
        ):
            x = x + conv2(act2(conv1(act1(x))))
        return x

    def init_random(self, generator: torch.Generator) -> None:
        for act1, conv1, act2, conv2 in zip(
            self.acts1, self.convs1, self.acts2, self.convs2, strict=True
        ):
            init_snake_(act1, generator)
            init_wn_conv_(conv1, generator)
            init_snake_(act2, generator)
            init_wn_conv_(conv2, generator, gain=RESIDUAL_GAIN)


class SideGenerator(nn.Module):
    """log-mel (B, M, T_mel) -> side (B, 1, T_mel * hop_length) in [-1, 1] (BigVGAN layout)."""

    def __init__(self, cfg: StereoConfig) -> None:
        super().__init__()
        pad = (EDGE_KERNEL - 1) // 2
        self.conv_pre = wn_conv1d(cfg.num_mels, cfg.width, EDGE_KERNEL, padding=pad)
        widths = [cfg.width // 2**i for i in range(len(cfg.upsample_rates) + 1)]
        self.upsample_rates = cfg.upsample_rates
        self.up_acts = nn.ModuleList(Snake1d(c) for c in widths[:-1])
        self.ups = nn.ModuleList(
            upsample_conv(c, c // 2, u)
            for c, u in zip(widths[:-1], cfg.upsample_rates, strict=True)
        )
        # Multi-receptive-field fusion: one AMPBlock per kernel on the same input, averaged.
        self.mrfs = nn.ModuleList(
            nn.ModuleList(AMPBlock(c, k, cfg.resblock_dilations) for k in cfg.resblock_kernels)
            for c in widths[1:]
        )
        self.act_post = Snake1d(widths[-1])
        self.conv_post = wn_conv1d(widths[-1], 1, EDGE_KERNEL, padding=pad)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.conv_pre(mel)  # (B, C0, T_mel)
        for act, up, mrf in zip(self.up_acts, self.ups, self.mrfs, strict=True):
            x = up(act(x))  # (B, C / 2, T * u)
            y = mrf[0](x)
            for block in mrf[1:]:
                y = y + block(x)
            x = y / len(mrf)
        return torch.tanh(self.conv_post(self.act_post(x)))  # (B, 1, T)

    def init_random(self, generator: torch.Generator) -> None:
        init_wn_conv_(self.conv_pre, generator, gain=1.0 / LOG_MEL_RMS)
        for act, up, mrf, u in zip(
            self.up_acts, self.ups, self.mrfs, self.upsample_rates, strict=True
        ):
            c_in = act.alpha.shape[1]
            init_snake_(act, generator)
            init_wn_conv_(up, generator, gain=upsample_gain(c_in, c_in // 2, u))
            for block in mrf:
                block.init_random(generator)
        init_snake_(self.act_post, generator)
        init_wn_conv_(self.conv_post, generator, gain=SIDE_OUT_GAIN)


# --- mono to stereo -------------------------------------------------------------------------------


class MonoToStereo(nn.Module):
    """mono (B, 1, T) -> stereo (B, 2, T) [left, right], with (left + right) / 2 == mono."""

    def __init__(self, cfg: StereoConfig, sample_rate: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.mel = MelFrontEnd(cfg, sample_rate)
        self.side_generator = SideGenerator(cfg)

    def forward(self, mono: Tensor, width: float | Tensor = 1.0) -> Tensor:
        """width scales the side (0: left == right == mono); a float, or a (B,) tensor per item."""
        _check_mono(mono, self.cfg.hop_length, "mono-to-stereo")
        side = self.side_generator(self.mel(mono))  # (B, 1, T)
        if isinstance(width, Tensor):  # a type check, not a value check: exports as one graph
            width = width.to(side.dtype).reshape(-1, 1, 1)  # (B, 1, 1)
        side = width * side
        return torch.cat([mono + side, mono - side], dim=1)  # (B, 2, T)

    def init_random(self, generator: torch.Generator) -> None:
        """Fill every parameter in place with seeded random values (buffers are config-derived)."""
        self.side_generator.init_random(generator)
