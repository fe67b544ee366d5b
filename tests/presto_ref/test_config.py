"""Configs, presets and the budget rule: `python -m pytest tests/presto_ref/test_config.py`."""

from __future__ import annotations

import dataclasses

import pytest

from presto_common.errors import ConfigError
from presto_ref.config import (
    QUINTILE_SIGMAS,
    BudgetSchedule,
    DiTConfig,
    PrestoConfig,
    SamplerConfig,
    StereoConfig,
    TextEncoderConfig,
    VAEConfig,
)
from presto_ref.edm import karras_sigmas
from presto_ref.presets import PRESETS, get_preset


def test_quintile_thresholds_are_the_karras_ramp_quintiles() -> None:
    # Recompute paper eq. 9 at ramp positions u = 0.2 .. 0.8 (6 steps puts i/(N-1) on them).
    ramp = karras_sigmas(6, 0.002, 80.0, 7.0)[1:5]
    for table, exact in zip(QUINTILE_SIGMAS, ramp):
        assert table == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize(
    ("sigma", "budget"),
    [(80.0, 12), (24.41, 12), (24.0, 8), (9.723, 8), (5.0, 8), (0.47, 0), (0.002, 0)],
)
def test_presto_ls_budget_per_sigma(sigma: float, budget: int) -> None:
    # Bands: [24.41, inf) -> 12, [5.839, 24.41) -> 8, [0.9654, 5.839) -> 8, then 0, 0.
    assert BudgetSchedule((12, 8, 8, 0, 0)).budget_for_sigma(sigma) == budget


def test_four_step_budgets_of_the_paper_presets() -> None:
    sigmas = karras_sigmas(4, 0.002, 80.0, 7.0)
    ls = PRESETS["presto-ls"].sampler.budgets
    assert [ls.budget_for_sigma(s) for s in sigmas] == [12, 8, 0, 0]
    l_sched = PRESETS["presto-l"].sampler.budgets
    assert [l_sched.budget_for_sigma(s) for s in sigmas] == [14, 12, 4, 0]


def test_paper_scale_defaults() -> None:
    cfg = PRESETS["presto-ls"]
    assert (cfg.dit.num_blocks, cfg.dit.width, cfg.dit.num_heads) == (28, 1152, 16)
    assert cfg.hop_length == 960
    assert cfg.frames_for_duration(32.0) == 1470
    assert cfg.frames_for_duration(32.0) * cfg.hop_length == 1_411_200
    assert cfg.sampler.kind == "ping-pong" and cfg.sampler.num_steps == 4
    assert PRESETS["presto-l"].sampler.kind == "dpmpp-2s"
    assert PRESETS["presto-l"].sampler.cfg_scale == 0.8


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_keep_every_feature(name: str) -> None:
    cfg = PRESETS[name]
    assert cfg.dit.num_blocks >= 4
    sigmas = karras_sigmas(
        cfg.sampler.num_steps, cfg.edm.sigma_min, cfg.edm.sigma_max, cfg.sampler.rho
    )
    used = {cfg.sampler.budgets.budget_for_sigma(s) for s in sigmas}
    assert len(used) >= 2, f"{name} exercises only budgets {used}"
    assert cfg.hop_length == 960


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_round_trips_through_a_dict(name: str) -> None:
    cfg = PRESETS[name]
    again = PrestoConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()


def test_config_hash_changes_with_any_field() -> None:
    cfg = PRESETS["tiny"]
    other = cfg.replace(dit=dataclasses.replace(cfg.dit, rope_theta=500.0))
    assert other.config_hash() != cfg.config_hash()


def test_from_dict_names_unknown_and_missing_keys() -> None:
    data = PRESETS["tiny"].to_dict()
    data["dit"]["depth"] = 3
    with pytest.raises(ConfigError, match=r"config\.dit has unknown keys \['depth'\]"):
        PrestoConfig.from_dict(data)
    data = PRESETS["tiny"].to_dict()
    del data["vae"]["decoder_width"]
    with pytest.raises(ConfigError, match=r"config\.vae lacks keys \['decoder_width'\]"):
        PrestoConfig.from_dict(data)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DiTConfig(width=100, num_heads=16), "divisible by dit.num_heads"),
        (lambda: VAEConfig(decoder_strides=(8, 6, 5)), "same product"),
        (lambda: StereoConfig(upsample_rates=(8, 5, 3)), "multiply to 120"),
        (lambda: SamplerConfig(rho=0.5), "rho=0.5 must be >= 1"),
        (lambda: SamplerConfig(num_steps=0), "num_steps=0"),
        (lambda: SamplerConfig(cfg_scale=1.5), "cfg_scale=1.5"),
        (lambda: BudgetSchedule((4, 2), (1.0, 0.5)), "len\\(budgets\\) - 1"),
        (lambda: BudgetSchedule((4, 2, 0), (0.5, 1.0)), "strictly descending"),
        (
            lambda: PrestoConfig(sampler=SamplerConfig(budgets=BudgetSchedule((28, 0, 0, 0, 0)))),
            "budgets must be <= 27",
        ),
        (lambda: PrestoConfig(dit=DiTConfig(latent_channels=16)), "must equal vae.latent_channels"),
        (lambda: PrestoConfig(bpm_range=(200.0, 100.0)), "bpm_range"),
        (lambda: VAEConfig(kernel_size=6), "vae.kernel_size=6 must be odd"),
        (lambda: StereoConfig(resblock_kernels=(3, 4)), "must be one or more odd kernels"),
        (lambda: StereoConfig(resblock_dilations=()), "resblock_dilations=\\(\\)"),
        (lambda: TextEncoderConfig(num_buckets=2), "need num_buckets >= 4"),
        (
            lambda: TextEncoderConfig(num_buckets=32, max_distance=8),
            "max_distance > num_buckets // 4",
        ),
    ],
)
def test_invalid_configs_raise_config_error(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'.*presto-ls"):
        get_preset("huge")
