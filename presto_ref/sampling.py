"""Samplers as pure functions of a denoiser, a sigma schedule and per-item random generators.

Noise follows `presto_common.noise` (the runtime uses the same rule, so it matches this reference
bit for bit in fp32): take b owns one CPU generator seeded with its seed, drawn in order for the
starting noise and then once per re-noising step. A take depends on its seed only.

Denoisers take latents x: (B, C_lat, T_lat) float32 and a Python float sigma and return x0 of the
same shape; sigma is a float so that a caller can pick a layer budget (a static graph) per level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from presto_common.noise import draw_noise, make_generators  # noqa: F401  (re-exported)

Denoiser = Callable[[Tensor, float], Tensor]
# Returns (D_cond, D_uncond) at the same x and sigma, for classifier-free guidance.
GuidedDenoiser = Callable[[Tensor, float], tuple[Tensor, Tensor]]
OnStep = Callable[[int, int], None]


# --- the distilled generator --------------------------------------------------------------------


def ping_pong(
    generator: Denoiser,
    sigmas: Sequence[float],
    *,
    generators: Sequence[torch.Generator],
    item_shape: Sequence[int],
    device: torch.device | str = "cpu",
    on_step: OnStep | None = None,
) -> Tensor:
    """Presto-S/LS sampling (consistency-model style "ping-pong", paper section 3.1).

    x = sigma_0 * z_0; for each step i: x0 = G(x, sigma_i), then re-noise with fresh noise to the next
    level, x = x0 + sigma_{i+1} * z_{i+1}. Returns the last x0: (B, *item_shape) float32.
    Works for any number of steps and any (continuous) sigmas, e.g. `karras_sigmas` with any rho.
    """
    sigmas = [float(s) for s in sigmas]
    x = sigmas[0] * draw_noise(generators, item_shape, device)
    for i, sigma in enumerate(sigmas):
        x0 = generator(x, sigma)
        if i + 1 < len(sigmas):
            x = x0 + sigmas[i + 1] * draw_noise(generators, item_shape, device)
        if on_step is not None:
            on_step(i + 1, len(sigmas))
    return x0


# --- the base model -----------------------------------------------------------------------------


def dpmpp_2s(
    denoise: Denoiser,
    sigmas: Sequence[float],
    *,
    generators: Sequence[torch.Generator],
    item_shape: Sequence[int],
    device: torch.device | str = "cpu",
) -> Tensor:
    """Deterministic DPM-Solver++(2S) in sigma form (Lu et al. 2022; k-diffusion's midpoint r = 1/2).

    With sigma_s = sqrt(sigma_i * sigma_{i+1}) (the midpoint in lambda = -ln sigma):
        u       = (sigma_s / sigma_i) x + (1 - sigma_s / sigma_i) D(x; sigma_i)
        x_{i+1} = (sigma_{i+1} / sigma_i) x + (1 - sigma_{i+1} / sigma_i) D(u; sigma_s)
    The schedule is followed by sigma = 0, reached with one Euler step (x = D(x; sigma_last)).
    """
    sigmas = [float(s) for s in sigmas] + [0.0]
    x = sigmas[0] * draw_noise(generators, item_shape, device)
    for sigma, sigma_next in zip(sigmas, sigmas[1:]):
        d = denoise(x, sigma)
        if sigma_next == 0:
            x = d
            continue
        sigma_s = math.sqrt(sigma * sigma_next)
        u = (sigma_s / sigma) * x + (1 - sigma_s / sigma) * d
        x = (sigma_next / sigma) * x + (1 - sigma_next / sigma) * denoise(u, sigma_s)
    return x


def dpmpp_2s_cfgpp(
    denoise: GuidedDenoiser,
    sigmas: Sequence[float],
    *,
    guidance: float,
    generators: Sequence[torch.Generator],
    item_shape: Sequence[int],
    device: torch.device | str = "cpu",
    on_step: OnStep | None = None,
) -> Tensor:
    """DPM-Solver++(2S) with CFG++ (Chung et al. 2025), guidance lambda in [0, 1] (paper: 0.8).

    CFG++ denoises with the guided D_l = D_u + lambda (D_c - D_u) but re-noises with the unconditional
    D_u: every "(1 - r) D + r x" of `dpmpp_2s` becomes "D_l + r (x - D_u)". As in the CFG++ authors'
    DPM++(2S) solver, the midpoint u is taken from the unconditional prediction alone, so that pass
    needs only D_u in principle; we evaluate both and discard D_c there to keep one denoiser interface.
    With D_c = D_u this is exactly `dpmpp_2s`.
    """
    sigmas = [float(s) for s in sigmas] + [0.0]
    x = sigmas[0] * draw_noise(generators, item_shape, device)
    for i, (sigma, sigma_next) in enumerate(zip(sigmas, sigmas[1:])):
        d_c, d_u = denoise(x, sigma)
        if sigma_next == 0:
            x = d_u + guidance * (d_c - d_u)
        else:
            sigma_s = math.sqrt(sigma * sigma_next)
            u = d_u + (sigma_s / sigma) * (x - d_u)
            m_c, m_u = denoise(u, sigma_s)
            x = m_u + guidance * (m_c - m_u) + (sigma_next / sigma) * (x - m_u)
        if on_step is not None:
            on_step(i + 1, len(sigmas) - 1)
    return x
