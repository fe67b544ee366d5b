"""Tests of the mono-to-stereo model and its mel front end (presto_ref/stereo.py), CPU only.

Run: python -m pytest tests/presto_ref/test_stereo.py -q
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F

from presto_common.errors import InputError
from presto_ref import stereo
from presto_ref.config import SAMPLE_RATE, StereoConfig
from presto_ref.presets import PRESETS
from presto_ref.stereo import MelFrontEnd, MonoToStereo, mel_filterbank

TINY = PRESETS["tiny"].stereo
PAPER = PRESETS["presto-ls"].stereo
AUDIO_RMS = 0.2  # about -14 dBFS, the loudness of mastered music


def _tiny_model(seed: int = 0) -> MonoToStereo:
    model = MonoToStereo(TINY, SAMPLE_RATE)
    model.init_random(torch.Generator().manual_seed(seed))
    return model


def _pink_noise(num_samples: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    """Noise with a 1/f power spectrum (music-like tilt) at AUDIO_RMS: (batch, 1, num_samples)."""
    white = torch.randn(batch, num_samples, generator=torch.Generator().manual_seed(seed))
    spec = torch.fft.rfft(white.double())
    freqs = torch.arange(spec.shape[-1], dtype=torch.float64).clamp(min=1.0)
    pink = torch.fft.irfft(spec / freqs.sqrt(), num_samples)
    pink = pink / pink.pow(2).mean(-1, keepdim=True).sqrt() * AUDIO_RMS
    return pink.float()[:, None]


def _rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


# --- downmix and width ----------------------------------------------------------------------------


def test_downmix_equals_mono() -> None:
    model = _tiny_model()
    mono = _pink_noise(20 * TINY.hop_length, batch=2)
    with torch.no_grad():
        out = model(mono)
    assert out.shape == (2, 2, mono.shape[-1])
    # ((m + s) + (m - s)) / 2 rounds twice in fp32; with |m|, |s| < 2 each rounding is <= 1.2e-7.
    err = ((out[:, 0] + out[:, 1]) / 2 - mono[:, 0]).abs().max().item()
    assert err <= 1e-6, f"downmix differs from mono by {err}"


def test_width_zero_gives_identical_channels() -> None:
    model = _tiny_model()
    mono = _pink_noise(20 * TINY.hop_length)
    with torch.no_grad():
        out = model(mono, width=0.0)
    assert torch.equal(out[:, 0], out[:, 1])
    assert torch.equal(out[:, 0], mono[:, 0])


def test_width_scales_the_side() -> None:
    model = _tiny_model()
    mono = _pink_noise(20 * TINY.hop_length)
    with torch.no_grad():
        out1, out2 = model(mono, width=1.0), model(mono, width=2.0)
    side1, side2 = (out1[:, 0] - out1[:, 1]) / 2, (out2[:, 0] - out2[:, 1]) / 2
    assert _rms(side1) > 1e-3, "the side must not be silent at init"
    # The side is computed identically; only the +- with mono and the halving round (~1e-7).
    torch.testing.assert_close(side2, 2 * side1, rtol=0, atol=1e-6)


def test_tensor_width_applies_per_item() -> None:
    model = _tiny_model()
    mono = _pink_noise(20 * TINY.hop_length, batch=3)
    widths = torch.tensor([0.0, 1.0, 2.0])
    with torch.no_grad():
        out = model(mono, width=widths)
        for i, w in enumerate(widths.tolist()):
            # Same batch, so the side is computed identically; only the width multiply differs in
            # form (tensor vs float), the same fp32 product. Allow at most one rounding step.
            expected = model(mono, width=w)[i]
            torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-7)
    assert torch.equal(out[0, 0], out[0, 1])


@pytest.mark.parametrize("num_samples", [1000, 241, 4799])
def test_rejects_length_off_the_hop(num_samples: int) -> None:
    with pytest.raises(InputError, match=rf"T={num_samples} samples.*240"):
        _tiny_model()(torch.zeros(1, 1, num_samples))


def test_rejects_too_short_audio() -> None:
    front = MelFrontEnd(PAPER, SAMPLE_RATE)  # pads by (1024 - 240) / 2 = 392 > one hop
    with pytest.raises(InputError, match=r"T=240 samples is too short.*480"):
        front(torch.zeros(1, 1, 240))


# --- mel front end --------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [2, 3, 7, 20])
def test_mel_frame_count(num_frames: int) -> None:
    front = MelFrontEnd(TINY, SAMPLE_RATE)
    mel = front(torch.zeros(2, 1, num_frames * TINY.hop_length))
    assert mel.shape == (2, TINY.num_mels, num_frames)


@pytest.mark.parametrize("cfg", [TINY, PAPER], ids=["tiny", "paper"])
def test_conv_stft_matches_torch_stft(cfg: StereoConfig) -> None:
    front = MelFrontEnd(cfg, SAMPLE_RATE)
    audio = _pink_noise(12 * cfg.hop_length, batch=2)
    pad = (cfg.n_fft - cfg.hop_length) // 2
    padded = F.pad(audio, (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(cfg.n_fft)
    ref = torch.stft(
        padded, cfg.n_fft, cfg.hop_length, window=window, center=False, return_complex=True
    ).abs()
    mag = front.magnitude(audio)
    assert mag.shape == ref.shape
    # fp32 conv sums of n_fft products and an FFT agree to ~1e-6 of the peak; the sqrt eps adds at
    # most sqrt(1e-9) = 3e-5 absolute. 1e-4 of the peak is above both and far below any real bug.
    err = (mag - ref).abs().max().item() / ref.max().item()
    assert err < 1e-4, f"relative error {err}"


def _slaney_hz(mel: float) -> float:
    # Independent of presto_ref.stereo: 200/3 Hz per mel below 1 kHz, 27 mels per 6.4x above.
    return mel * 200 / 3 if mel < 15 else 1000 * math.exp((mel - 15) * math.log(6.4) / 27)


def _slaney_mel(hz: float) -> float:
    return hz * 3 / 200 if hz < 1000 else 15 + math.log(hz / 1000) * 27 / math.log(6.4)


@pytest.mark.parametrize(
    ("cfg", "band"), [(TINY, 12), (TINY, 20), (TINY, 28), (PAPER, 64), (PAPER, 100)]
)
def test_sine_peaks_in_its_mel_band(cfg: StereoConfig, band: int) -> None:
    lo, hi = _slaney_mel(cfg.f_min), _slaney_mel(cfg.f_max)
    center_hz = _slaney_hz(lo + (band + 1) * (hi - lo) / (cfg.num_mels + 1))
    fft_bin = round(center_hz * cfg.n_fft / SAMPLE_RATE)
    freq_hz = fft_bin * SAMPLE_RATE / cfg.n_fft  # exactly on a DFT bin
    t = torch.arange(16 * cfg.hop_length, dtype=torch.float64) / SAMPLE_RATE
    audio = (0.5 * torch.sin(2 * math.pi * freq_hz * t)).float()[None, None]
    mel = MelFrontEnd(cfg, SAMPLE_RATE)(audio)
    peaks = mel[0, :, 4:-4].argmax(dim=0)  # frames away from the reflect-padded edges
    assert bool((peaks == band).all()), f"{freq_hz:.1f} Hz peaks in bands {peaks.unique().tolist()}"


@pytest.mark.parametrize("cfg", [TINY, PAPER], ids=["tiny", "paper"])
def test_every_mel_band_has_weight(cfg: StereoConfig) -> None:
    fbank = mel_filterbank(cfg.num_mels, cfg.n_fft, SAMPLE_RATE, cfg.f_min, cfg.f_max)
    assert fbank.shape == (cfg.num_mels, cfg.n_fft // 2 + 1)
    assert bool((fbank.max(dim=1).values > 0).all()), "an empty mel band sees no FFT bin"
    # Slaney normalisation scales each triangle to unit area in Hz; bands spanning several bins
    # (the upper half) sample the triangle finely enough for the Riemann sum to be within 5%.
    area = fbank.sum(dim=1) * SAMPLE_RATE / cfg.n_fft
    upper = area[cfg.num_mels // 2 :]
    assert bool(((upper - 1).abs() < 0.05).all()), upper


def test_front_end_is_finite_on_silence() -> None:
    front = MelFrontEnd(TINY, SAMPLE_RATE)
    audio = torch.zeros(1, 1, 8 * TINY.hop_length, requires_grad=True)
    mel = front(audio)
    assert bool(torch.isfinite(mel).all())
    (mel * torch.randn(mel.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert bool(torch.isfinite(audio.grad).all())
    # The whole model, too: silence in gives finite stereo and gradients (sqrt eps, log floor).
    model = _tiny_model()
    out = model(audio)
    out.sum().backward()
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(audio.grad).all())


def test_buffers_are_not_saved() -> None:
    keys = set(_tiny_model().state_dict())
    assert not any(k.startswith("mel.") for k in keys), sorted(keys)


def test_doctests() -> None:
    assert doctest.testmod(stereo).failed == 0


# --- seeded random init ---------------------------------------------------------------------------


def test_init_random_fills_every_parameter_deterministically() -> None:
    a, b, c = _tiny_model(0), _tiny_model(0), _tiny_model(1)
    params_b, params_c = dict(b.named_parameters()), dict(c.named_parameters())
    for name, p in a.named_parameters():
        assert bool((p != 0).all()), f"{name} has zeros after init_random"
        assert torch.equal(p, params_b[name]), f"{name} differs between two inits with seed 0"
        # Differing for another seed proves init_random wrote this parameter (not the default init).
        assert not torch.equal(p, params_c[name]), f"{name} is the same for seeds 0 and 1"


def test_every_parameter_gets_a_gradient() -> None:
    model = _tiny_model()
    # 20 mel frames: the first stage runs at 160 steps, wider than the widest dilated reach (5 * 5).
    out = model(_pink_noise(20 * TINY.hop_length))
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * weights).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert bool((p.grad != 0).all()), f"{name} has elements with zero gradient"


def test_activations_stay_in_range() -> None:
    model = _tiny_model()
    gen = model.side_generator
    seen: dict[str, float] = {}
    hooks = [gen.conv_post.register_forward_hook(lambda m, i, o: seen.update(pre_tanh=_rms(o)))]
    for j, up in enumerate(gen.ups):
        hooks.append(
            up.register_forward_hook(lambda m, i, o, j=j: seen.update({f"up{j}": _rms(o)}))
        )
    with torch.no_grad():
        model(_pink_noise(40 * TINY.hop_length))
    for h in hooks:
        h.remove()
    # The init aims at a pre-tanh side RMS of ~0.1 (about 6 dB under a -14 dBFS mid). With only 2
    # channels at the end the tiny model gives 0.05-0.2 over 30 seeds (stage outputs 0.6-2.4); the
    # bounds sit well outside that, so they fail only when a gain is off by a large factor.
    assert 0.02 < seen["pre_tanh"] < 0.8, seen
    for j in range(len(gen.ups)):
        assert 0.2 < seen[f"up{j}"] < 6.0, seen


def test_mel_front_end_stays_fp32_when_the_model_is_cast() -> None:
    # The STFT bases are an fp32 island: a bf16 model must see the same log-mel as an fp32 one,
    # up to the bf16 rounding of the mono input and of the output (8 mantissa bits: ~0.4% relative).
    cfg = PRESETS["tiny"].stereo
    model = MonoToStereo(cfg, SAMPLE_RATE)
    half = MonoToStereo(cfg, SAMPLE_RATE).to(torch.bfloat16)
    assert half.mel.bases.dtype == torch.float32 and half.mel.fbank.dtype == torch.float32
    audio = 0.3 * torch.randn(1, 1, 8 * cfg.hop_length, generator=torch.Generator().manual_seed(0))
    ref = model.mel(audio.to(torch.bfloat16).float())
    got = half.mel(audio.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=1e-2, atol=1e-2)
