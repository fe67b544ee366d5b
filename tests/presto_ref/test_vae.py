"""Tests of the DAC-style KL VAE (presto_ref/vae.py) on tiny configs, CPU only.

Run: python -m pytest tests/presto_ref/test_vae.py -q
"""

from __future__ import annotations

import pytest
import torch

from presto_common.errors import InputError
from presto_ref.layers import init_wn_conv_, upsample_conv
from presto_ref.presets import PRESETS
from presto_ref.vae import VAE, VAEDecoder, upsample_gain

TINY = PRESETS["tiny"].vae
HOP = 960  # the paper's VAE hop in samples (DESIGN.md section 2)
LATENT_STD = 0.5  # EDM's sigma_data: the scale the DiT hands latents to the decoder at


def _tiny_vae(seed: int = 0) -> VAE:
    vae = VAE(TINY)
    vae.init_random(torch.Generator().manual_seed(seed))
    return vae


def _latents(num_frames: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return LATENT_STD * torch.randn(batch, TINY.latent_channels, num_frames, generator=g)


def _rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


# --- shapes ---------------------------------------------------------------------------------------


def test_hop_is_960() -> None:
    assert TINY.hop_length == HOP
    assert PRESETS["presto-ls"].vae.hop_length == HOP


@pytest.mark.parametrize("num_frames", [1, 2, 3, 7, 12])
def test_decoder_emits_exactly_960_samples_per_frame(num_frames: int) -> None:
    vae = _tiny_vae()
    with torch.no_grad():
        audio = vae.decode(_latents(num_frames, batch=2))
    assert audio.shape == (2, 1, num_frames * HOP)


def test_paper_scale_decoder_shape_on_meta_device() -> None:
    # 32 s = 1470 frames = 1,411,200 samples (DESIGN.md section 2); meta tensors carry shapes only.
    cfg = PRESETS["presto-ls"].vae
    with torch.device("meta"):
        decoder = VAEDecoder(cfg)
        audio = decoder(torch.empty(1, cfg.latent_channels, 1470))
    assert audio.shape == (1, 1, 1_411_200)


def test_decoder_rejects_wrong_latent_channels() -> None:
    with pytest.raises(InputError, match=r"\(B, 32, T_lat\)"):
        _tiny_vae().decode(torch.zeros(1, 16, 4))


@pytest.mark.parametrize("num_frames", [1, 3, 4])
def test_encoder_maps_hop_multiples_to_frames(num_frames: int) -> None:
    vae = _tiny_vae()
    audio = 0.2 * torch.randn(2, 1, num_frames * HOP, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mean, std = vae.encoder(audio)
    assert mean.shape == std.shape == (2, TINY.latent_channels, num_frames)
    assert bool((std > 0).all()), "std = softplus(scale) + 1e-4 must be positive"


@pytest.mark.parametrize("num_samples", [1000, 959, 961])
def test_encoder_rejects_length_off_the_hop(num_samples: int) -> None:
    with pytest.raises(InputError, match=rf"T={num_samples} samples.*960"):
        _tiny_vae().encode(torch.zeros(1, 1, num_samples))


def test_encode_samples_with_generator_and_returns_mean_without() -> None:
    vae = _tiny_vae()
    audio = 0.2 * torch.randn(1, 1, 3 * HOP, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mean, _ = vae.encoder(audio)
        assert torch.equal(vae.encode(audio), mean)
        z1 = vae.encode(audio, torch.Generator().manual_seed(7))
        z2 = vae.encode(audio, torch.Generator().manual_seed(7))
        z3 = vae.encode(audio, torch.Generator().manual_seed(8))
    assert torch.equal(z1, z2), "the same seed must give the same sample"
    assert not torch.equal(z1, z3) and not torch.equal(z1, mean)


def test_upsample_gain_gives_unit_variance() -> None:
    # weight_norm on ConvTranspose1d normalises per input channel; check the gain numerically.
    c_in, c_out, stride = 64, 32, 5
    conv = upsample_conv(c_in, c_out, stride)
    init_wn_conv_(conv, torch.Generator().manual_seed(0), gain=upsample_gain(c_in, c_out, stride))
    with torch.no_grad():
        y = conv(torch.randn(4, c_in, 200, generator=torch.Generator().manual_seed(1)))
    # 64 x 32 random rows: the output variance of one draw is within ~10% of its expectation 1.
    assert 0.8 < _rms(y) < 1.2


# --- seeded random init ---------------------------------------------------------------------------


def test_init_random_fills_every_parameter_deterministically() -> None:
    a, b, c = _tiny_vae(0), _tiny_vae(0), _tiny_vae(1)
    params_b, params_c = dict(b.named_parameters()), dict(c.named_parameters())
    for name, p in a.named_parameters():
        assert bool((p != 0).all()), f"{name} has zeros after init_random"
        assert torch.equal(p, params_b[name]), f"{name} differs between two inits with seed 0"
        # Differing for another seed proves init_random wrote this parameter (not the default init).
        assert not torch.equal(p, params_c[name]), f"{name} is the same for seeds 0 and 1"


def test_every_parameter_gets_a_gradient() -> None:
    vae = _tiny_vae()
    g = torch.Generator().manual_seed(5)
    # 6 frames: long enough that every tap of the widest dilated conv (reach 3 * 9) sees samples.
    audio = 0.2 * torch.randn(1, 1, 6 * HOP, generator=g)
    mean, std = vae.encoder(audio)
    decoded = vae.decode(_latents(6))
    loss = (
        (mean * torch.randn(mean.shape, generator=g)).sum()
        + (std * torch.randn(std.shape, generator=g)).sum()
        + (decoded * torch.randn(decoded.shape, generator=g)).sum()
    )
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert bool((p.grad != 0).all()), f"{name} has elements with zero gradient"


def test_activations_stay_in_range() -> None:
    vae = _tiny_vae()
    decoder = vae.decoder
    seen: dict[str, float] = {}
    hooks = [decoder.conv_out.register_forward_hook(lambda m, i, o: seen.update(pre_tanh=_rms(o)))]
    for j, block in enumerate(decoder.blocks):
        hooks.append(
            block.register_forward_hook(lambda m, i, o, j=j: seen.update({f"block{j}": _rms(o)}))
        )
    with torch.no_grad():
        audio = vae.decode(_latents(16))
    for h in hooks:
        h.remove()
    # The init aims at a pre-tanh RMS of ~0.3-0.6 (audible, not saturated). Over 40 seeds the tiny
    # decoder gives 0.34-0.78 and block outputs 0.9-3.0; the bounds sit well outside that, so they
    # fail only when a gain is off by a large factor (e.g. no sqrt in the ConvTranspose gain).
    assert 0.1 < seen["pre_tanh"] < 1.0, seen
    for j in range(len(decoder.blocks)):
        assert 0.3 < seen[f"block{j}"] < 6.0, seen
    assert 0.05 < _rms(audio) < 0.9, "audio must be neither silent nor saturated"
    # Encoder: noise at -14 dBFS gives a latent mean near the decoder's expected scale of 0.5.
    noise = 0.2 * torch.randn(1, 1, 8 * HOP, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        mean, _ = vae.encoder(noise)
    assert 0.15 < _rms(mean) < 1.5
