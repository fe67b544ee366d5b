"""Noise levels and layer budgets: the Karras schedule (paper eq. 9) and the Presto-L budget rule.

Both the reference sampler and the runtime call these, so a seed gives the same sigmas and the same
DiT engine per step everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from presto_common.errors import InputError


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    """The inference schedule, high to low, without a trailing 0 (paper eq. 9, Karras et al. 2022 eq. 5).

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i < N.
    One step is [sigma_max]. Any rho >= 1 is allowed (paper A.5). Python floats (float64).

    >>> [round(s, 3) for s in karras_sigmas(4, 0.002, 80.0, 7.0)]
    [80.0, 9.723, 0.47, 0.002]
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise InputError(f"steps={num_steps!r} must be an integer >= 1; the distilled default is 4")
    if not rho >= 1:
        raise InputError(f"rho={rho} must be >= 1 (paper A.5); use the default 7")
    if num_steps == 1:
        return [float(sigma_max)]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / (num_steps - 1) * (lo - hi)) ** rho for i in range(num_steps)]


def budget_for_sigma(
    budgets: Sequence[int], sigma_thresholds: Sequence[float], sigma: float
) -> int:
    """Blocks the DiT drops at noise level sigma (Presto-L, section 3.3).

    The noise axis is cut into len(budgets) bands by `sigma_thresholds` (descending); band 0 is the
    highest noise. A sigma equal to a threshold falls into the higher-noise band.
    """
    return budgets[sum(1 for t in sigma_thresholds if sigma < t)]
