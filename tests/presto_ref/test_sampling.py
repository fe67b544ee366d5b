"""Samplers on Gaussian data, where everything is known in closed form.

Run: `python -m pytest tests/presto_ref/test_sampling.py`.

For data x ~ N(0, s^2) noised to x + sigma n, the ideal denoiser is D(x, sigma) = x s^2 / (s^2 + sigma^2)
and the exact posterior is N(D(x, sigma), s^2 sigma^2 / (s^2 + sigma^2)).
"""

from __future__ import annotations

import math

import pytest
import torch

from presto_ref.edm import karras_sigmas
from presto_ref.sampling import (
    dpmpp_2s,
    dpmpp_2s_cfgpp,
    draw_noise,
    make_generators,
    ping_pong,
)

S = 0.5  # data standard deviation (= sigma_data)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def ideal_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x * S**2 / (S**2 + sigma**2)


def dpm_output_std(num_steps: int, rho: float = 7.0) -> float:
    """Std of DPM++(2S) output: the sampler is linear in its start noise, so one draw tells it all."""
    sigmas = karras_sigmas(num_steps, SIGMA_MIN, SIGMA_MAX, rho)
    out = dpmpp_2s(ideal_denoiser, sigmas, generators=make_generators([3]), item_shape=(1,))
    (z,) = draw_noise(make_generators([3]), (1,), "cpu")
    return abs(out.item() / z.item())


def test_dpmpp_2s_converges_to_the_data_std() -> None:
    # The exact probability-flow ODE maps sigma_max z to z sigma_max s / sqrt(s^2 + sigma_max^2),
    # which is s to 2e-5 relative; the solver error must shrink with the step count.
    errors = [abs(dpm_output_std(n) - S) / S for n in (2, 4, 8, 16, 32, 64, 128)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3, errors
    # A second-order solver: doubling the steps divides the error by about 4 once steps are many.
    assert 3.0 < errors[-2] / errors[-1] < 5.0, errors


def test_cfgpp_with_equal_predictions_is_the_unguided_sampler() -> None:
    sigmas = karras_sigmas(6, SIGMA_MIN, SIGMA_MAX, 7.0)
    kw = dict(item_shape=(2, 5))
    plain = dpmpp_2s(ideal_denoiser, sigmas, generators=make_generators([1, 2]), **kw)
    for guidance in (0.0, 0.8, 1.0):
        guided = dpmpp_2s_cfgpp(
            lambda x, s: (ideal_denoiser(x, s), ideal_denoiser(x, s)),
            sigmas,
            guidance=guidance,
            generators=make_generators([1, 2]),
            **kw,
        )
        torch.testing.assert_close(guided, plain, rtol=0, atol=1e-6)


def test_cfgpp_at_zero_guidance_follows_the_unconditional_model() -> None:
    def cond(x, s):  # a conditional model for data N(1, s^2)
        return 1 + (x - 1) * S**2 / (S**2 + s**2)

    sigmas = karras_sigmas(6, SIGMA_MIN, SIGMA_MAX, 7.0)
    uncond_only = dpmpp_2s(ideal_denoiser, sigmas, generators=make_generators([4]), item_shape=(3,))
    guided = dpmpp_2s_cfgpp(
        lambda x, s: (cond(x, s), ideal_denoiser(x, s)),
        sigmas,
        guidance=0.0,
        generators=make_generators([4]),
        item_shape=(3,),
    )
    torch.testing.assert_close(guided, uncond_only)
    full = dpmpp_2s_cfgpp(
        lambda x, s: (cond(x, s), ideal_denoiser(x, s)),
        sigmas,
        guidance=1.0,
        generators=make_generators([4]),
        item_shape=(3,),
    )
    # Full guidance pulls the samples towards the conditional mean 1.
    assert (full - uncond_only).mean().item() > 0.5


def posterior_sampler(seed: int):
    noise_gen = torch.Generator().manual_seed(seed)

    def generate(x: torch.Tensor, sigma: float) -> torch.Tensor:
        var = S**2 * sigma**2 / (S**2 + sigma**2)
        eps = torch.randn(x.shape, generator=noise_gen)
        return ideal_denoiser(x, sigma) + math.sqrt(var) * eps

    return generate


NUM_SAMPLES = 200_000  # standard error of a std estimate: s / sqrt(2 n) = 0.16% of s


@pytest.mark.parametrize("num_steps", [1, 2, 4, 8])
@pytest.mark.parametrize("rho", [1.0, 7.0, 1000.0])
def test_ping_pong_with_an_exact_generator_keeps_the_data_std(num_steps: int, rho: float) -> None:
    sigmas = karras_sigmas(num_steps, SIGMA_MIN, SIGMA_MAX, rho)
    out = ping_pong(
        posterior_sampler(num_steps),
        sigmas,
        generators=make_generators([0]),
        item_shape=(NUM_SAMPLES,),
    )
    # 1% is six standard errors; starting from sigma_max z instead of the exact N(0, s^2 + sigma_max^2)
    # changes the variance by under 1e-8.
    assert out.std().item() == pytest.approx(S, rel=0.01)
    assert abs(out.mean().item()) < 0.01


def test_ping_pong_with_a_mean_only_generator_shrinks() -> None:
    # The negative control: a generator that returns the posterior mean loses variance, so the test
    # above can tell a correct re-noising loop from one that is not.
    sigmas = karras_sigmas(4, SIGMA_MIN, SIGMA_MAX, 7.0)
    out = ping_pong(
        ideal_denoiser, sigmas, generators=make_generators([0]), item_shape=(NUM_SAMPLES,)
    )
    assert out.std().item() < 0.95 * S


def test_ping_pong_calls_the_generator_at_each_sigma_in_order() -> None:
    sigmas = karras_sigmas(4, SIGMA_MIN, SIGMA_MAX, 7.0)
    seen, steps = [], []

    def record(x, sigma):
        seen.append(sigma)
        return torch.zeros_like(x)

    out = ping_pong(
        record,
        sigmas,
        generators=make_generators([0]),
        item_shape=(2,),
        on_step=lambda i, n: steps.append((i, n)),
    )
    assert seen == sigmas
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert torch.equal(out, torch.zeros(1, 2))  # the last x0 is returned, not the re-noised x


def test_a_take_does_not_depend_on_its_batch() -> None:
    sigmas = karras_sigmas(4, SIGMA_MIN, SIGMA_MAX, 7.0)
    batch = ping_pong(
        ideal_denoiser, sigmas, generators=make_generators([5, 6, 7]), item_shape=(3, 4)
    )
    for i, seed in enumerate([5, 6, 7]):
        alone = ping_pong(
            ideal_denoiser, sigmas, generators=make_generators([seed]), item_shape=(3, 4)
        )
        assert torch.equal(batch[i], alone[0])
    assert not torch.equal(batch[0], batch[1])
