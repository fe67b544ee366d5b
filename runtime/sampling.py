"""The sampling loops the runtime runs on engines: ping-pong and DPM-Solver++(2S) with CFG++.

Each mirrors its `presto_ref.sampling` twin operation for operation, so that fp32 engines reproduce
the reference to float rounding; they differ only in taking the noise as tensors already drawn
(`presto_common.noise.draw_all`) instead of generators. Only tensor ops on the given tensors and
Python-float sigmas: a loop can be captured in a CUDA graph (style guide 24).

The denoisers take latents x: (B, C_lat, T_lat) float32, a Python-float sigma and the DiT budget to
run at, and return D(x; sigma) of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor

from presto_common.errors import ArtifactError
from presto_common.names import SAMPLERS
from presto_common.schedule import budget_for_sigma

Denoiser = Callable[[Tensor, float, int], Tensor]
# (D_cond, D_uncond) at the same x, sigma and budget, for classifier-free guidance.
GuidedDenoiser = Callable[[Tensor, float, int], tuple[Tensor, Tensor]]


def check_kind(kind: str) -> str:
    """`kind` if this runtime runs that sampler, else ArtifactError naming it and the fix."""
    if kind not in SAMPLERS:
        raise ArtifactError(
            f"the manifest's sampler kind {kind!r} is not one this runtime runs "
            f"({', '.join(SAMPLERS)}); rebuild the folder with this toolkit's "
            f"`python -m export.build`, or run it with the runtime of the toolkit that built it"
        )
    return kind


def num_draws(kind: str, num_steps: int) -> int:
    """Noise tensors a request draws per take: ping-pong one per step, dpmpp-2s the start only."""
    return num_steps if check_kind(kind) == "ping-pong" else 1


def evaluations(
    kind: str,
    sigmas: Sequence[float],
    budgets: Sequence[int],
    band_budgets: Sequence[int],
    sigma_thresholds: Sequence[float],
) -> list[tuple[float, int]]:
    """(sigma, budget) of every D evaluation of a sample, in order; guided ones count once.

    ping-pong: one per step at the step's budget. dpmpp-2s: per step, D at sigma_i and (but for the
    last step, which goes to sigma 0) at the midpoint sigma_s = sqrt(sigma_i sigma_{i+1}), whose
    budget comes from the same sigma-to-budget bands.
    """
    if check_kind(kind) == "ping-pong":
        return [(float(s), int(b)) for s, b in zip(sigmas, budgets, strict=True)]
    calls = []
    for i, (sigma, budget) in enumerate(zip(sigmas, budgets, strict=True)):
        calls.append((float(sigma), int(budget)))
        if i + 1 < len(sigmas):
            sigma_s = math.sqrt(sigma * sigmas[i + 1])
            calls.append((sigma_s, budget_for_sigma(band_budgets, sigma_thresholds, sigma_s)))
    return calls


# --- the distilled generator --------------------------------------------------------------------


def ping_pong(
    denoise: Denoiser, sigmas: Sequence[float], budgets: Sequence[int], noise: Sequence[Tensor]
) -> Tensor:
    """Presto-S/LS ping-pong (paper section 3.1); `presto_ref.sampling.ping_pong`.

    x = sigma_0 z_0; per step i: x0 = D(x; sigma_i), then x = x0 + sigma_{i+1} z_{i+1}.
    noise: one (B, C_lat, T_lat) tensor z_i per step. Returns the last x0.
    """
    x = sigmas[0] * noise[0]
    for i, (sigma, budget) in enumerate(zip(sigmas, budgets)):
        x0 = denoise(x, sigma, budget)
        if i + 1 < len(sigmas):
            x = x0 + sigmas[i + 1] * noise[i + 1]
    return x0


# --- the base model -----------------------------------------------------------------------------


def dpmpp_2s_cfgpp(
    denoise: GuidedDenoiser,
    calls: Sequence[tuple[float, int]],
    sigmas: Sequence[float],
    z: Tensor,
    guidance: float,
) -> Tensor:
    """DPM-Solver++(2S) with CFG++ (Chung et al. 2025); `presto_ref.sampling.dpmpp_2s_cfgpp`.

    With D_l = D_u + lambda (D_c - D_u) and sigma_s = sqrt(sigma_i sigma_{i+1}):
        u       = D_u(x; sigma_i) + (sigma_s / sigma_i) (x - D_u(x; sigma_i))
        x_{i+1} = D_l(u; sigma_s) + (sigma_{i+1} / sigma_i) (x - D_u(u; sigma_s))
    and the last step goes to sigma 0 with x = D_l(x; sigma_last). The midpoint u takes the
    unconditional prediction alone. x starts at sigma_0 z; calls: `evaluations("dpmpp-2s", ...)`.
    Returns x at sigma 0: (B, C_lat, T_lat).
    """
    sigmas = [float(s) for s in sigmas] + [0.0]
    calls = iter(calls)
    x = sigmas[0] * z
    for sigma, sigma_next in zip(sigmas, sigmas[1:]):
        d_c, d_u = denoise(x, *next(calls))
        if sigma_next == 0:
            x = d_u + guidance * (d_c - d_u)
        else:
            sigma_s = math.sqrt(sigma * sigma_next)
            u = d_u + (sigma_s / sigma) * (x - d_u)
            m_c, m_u = denoise(u, *next(calls))
            x = m_u + guidance * (m_c - m_u) + (sigma_next / sigma) * (x - m_u)
    return x
