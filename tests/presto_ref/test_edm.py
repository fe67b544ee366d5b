"""EDM preconditioning and schedules against the paper's formulas.

Run: `python -m pytest tests/presto_ref/test_edm.py`.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from presto_ref.config import EDMConfig
from presto_ref.edm import EDMPrecond, edm_coefficients, karras_sigmas, loss_weight, training_sigmas

SIGMA_DATA = 0.5


@pytest.mark.parametrize("sigma", [0.002, 0.1, 0.5, 1.0, 9.723, 80.0])
def test_coefficients_match_the_formulas(sigma: float) -> None:
    # Paper eq. 4 / EDM Table 1, written out independently in float64.
    s, d = sigma, SIGMA_DATA
    expected = (
        d**2 / (s**2 + d**2),
        s * d / math.sqrt(s**2 + d**2),
        1 / math.sqrt(s**2 + d**2),
        math.log(s) / 4,
    )
    got = edm_coefficients(torch.tensor([sigma]), SIGMA_DATA)
    for value, want in zip(got, expected):
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(want, rel=1e-6)


def test_coefficients_at_sigma_data() -> None:
    # At sigma = sigma_data: c_skip = 1/2, c_out = sigma_data / sqrt 2, c_in = 1 / (sigma_data sqrt 2).
    c_skip, c_out, c_in, c_noise = edm_coefficients(torch.tensor([0.5]), 0.5)
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(0.5 / math.sqrt(2))
    assert c_in.item() == pytest.approx(1 / (0.5 * math.sqrt(2)))
    assert c_noise.item() == pytest.approx(math.log(0.5) / 4)


def test_unit_variance_properties() -> None:
    # EDM's design: c_in gives the network unit-variance input, and c_skip^2 sigma_d^2 + c_out^2
    # equals sigma_d^2 (the effective target has unit variance after scaling by 1/c_out).
    sigma = torch.logspace(-3, 2, 50)
    c_skip, c_out, c_in, _ = edm_coefficients(sigma, SIGMA_DATA)
    var_x = SIGMA_DATA**2 + sigma**2
    torch.testing.assert_close(c_in**2 * var_x, torch.ones_like(sigma))
    target_var = (1 - c_skip) ** 2 * SIGMA_DATA**2 + c_skip**2 * sigma**2
    torch.testing.assert_close(target_var / c_out**2, torch.ones_like(sigma))
    torch.testing.assert_close(loss_weight(sigma, SIGMA_DATA), 1 / c_out**2)


def test_precond_wraps_the_network() -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor(2.0))

        def forward(self, x_in, c_noise, **cond):
            self.seen = (x_in.clone(), c_noise.clone())
            return self.w * torch.ones_like(x_in)

    net = Fixed()
    den = EDMPrecond(net, SIGMA_DATA)
    x = torch.randn(2, 3, 5)
    sigma = torch.tensor([0.3, 7.0])
    out = den(x, sigma)
    c_skip, c_out, c_in, c_noise = (c[:, None, None] for c in edm_coefficients(sigma, SIGMA_DATA))
    torch.testing.assert_close(out, c_skip * x + c_out * 2.0)
    torch.testing.assert_close(net.seen[0], c_in * x)
    torch.testing.assert_close(net.seen[1], torch.log(sigma) / 4)


def test_karras_schedule() -> None:
    sigmas = karras_sigmas(4, 0.002, 80.0, 7.0)
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-1] == pytest.approx(0.002)
    assert sigmas[1] == pytest.approx(9.7232, rel=1e-4) and sigmas[2] == pytest.approx(
        0.46998, rel=1e-4
    )
    assert karras_sigmas(1, 0.002, 80.0, 7.0) == [80.0]
    # rho = 1 is a linear ramp in sigma.
    assert karras_sigmas(3, 0.0, 80.0, 1.0) == pytest.approx([80.0, 40.0, 0.0])
    # A larger rho moves the middle steps to lower noise (paper A.5).
    assert karras_sigmas(4, 0.002, 80.0, 1000.0)[1] < karras_sigmas(4, 0.002, 80.0, 7.0)[1]


def test_training_sigmas_are_log_normal() -> None:
    cfg = EDMConfig()
    sigmas = training_sigmas(cfg, 200_000, torch.Generator().manual_seed(0))
    log_s = sigmas.log()
    # 200k samples: the standard error of the mean is 1/sqrt(2e5) = 0.0022, of the std about 0.0016.
    assert log_s.mean().item() == pytest.approx(-0.4, abs=0.01)
    assert log_s.std().item() == pytest.approx(1.0, abs=0.01)
