"""EDM preconditioning and training noise (Karras et al. 2022, 2024); the inference schedule is
`presto_common.schedule.karras_sigmas`, re-exported here.

All coefficients are computed in fp32 (or float64 for schedules), whatever dtype the network runs in.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from presto_common.schedule import karras_sigmas  # noqa: F401  (the schedule lives in presto_common)
from presto_ref.config import EDMConfig


def edm_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) at noise levels sigma: (B,), all fp32 (EDM Table 1, paper eq. 4).

    c_skip = sigma_d^2 / (sigma^2 + sigma_d^2)     c_out = sigma * sigma_d / sqrt(sigma^2 + sigma_d^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_d^2)         c_noise = ln(sigma) / 4
    """
    sigma = sigma.float()
    total = sigma.square() + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data * torch.rsqrt(total)
    c_in = torch.rsqrt(total)
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM's lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma * sigma_d)^2 = 1 / c_out^2."""
    sigma = sigma.float()
    return (sigma.square() + sigma_data**2) / (sigma * sigma_data).square()


def training_sigmas(cfg: EDMConfig, num: int, generator: torch.Generator) -> Tensor:
    """Training noise levels: ln(sigma) ~ N(P_mean, P_std^2) (EDM2; paper A.1). Returns (num,) fp32."""
    return torch.exp(cfg.p_mean + cfg.p_std * torch.randn(num, generator=generator))


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip * x + c_out * F(c_in * x; c_noise, ...)  (paper eq. 4).

    Wraps a network F(x_in, c_noise, **cond). The coefficients and the skip sum are fp32; F runs in
    the dtype of its weights, cast visibly at the boundary. Holds no parameters of its own.
    """

    def __init__(self, net: nn.Module, sigma_data: float) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma: Tensor, **cond: Tensor | int) -> Tensor:
        """x: (B, C_lat, T_lat) noisy latents, sigma: (B,) -> x0: (B, C_lat, T_lat) float32."""
        c_skip, c_out, c_in, c_noise = (
            c[:, None, None] for c in edm_coefficients(sigma, self.sigma_data)
        )
        dtype = next(self.net.parameters()).dtype
        F_x = self.net((c_in * x.float()).to(dtype), c_noise[:, 0, 0], **cond)
        return c_skip * x.float() + c_out * F_x.float()
