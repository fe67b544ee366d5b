"""The shared leaf: `python -m pytest tests/presto_common`.

These rules are used by both the reference and the runtime; a change here changes both at once, so
the tests pin their behaviour rather than compare two copies.
"""

from __future__ import annotations

import doctest
import logging

import numpy as np
import pytest
import soundfile
import torch

import presto_common.schedule
import presto_common.tokenizer
from presto_common import cli
from presto_common.errors import (
    ArtifactError,
    BackendUnavailable,
    ConfigError,
    EngineBuildError,
    InputError,
    PrestoError,
)
from presto_common.names import BACKENDS, backend_name, torch_dtype
from presto_common.noise import (
    SEED_MAX,
    check_seed,
    draw_all,
    draw_noise,
    fill_draws,
    make_generators,
)
from presto_common.schedule import budget_for_sigma, karras_sigmas
from presto_common.tokenizer import encode_bytes


@pytest.mark.parametrize("module", [presto_common.schedule, presto_common.tokenizer])
def test_doctests(module) -> None:
    assert doctest.testmod(module).failed == 0


def test_one_error_root() -> None:
    for cls in (ArtifactError, BackendUnavailable, ConfigError, EngineBuildError, InputError):
        assert issubclass(cls, PrestoError)


def test_karras_schedule_ends_and_refusals() -> None:
    sigmas = karras_sigmas(4, 0.002, 80.0, 7.0)
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-1] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))
    assert karras_sigmas(1, 0.002, 80.0, 7.0) == [80.0]
    with pytest.raises(InputError, match="steps=0"):
        karras_sigmas(0, 0.002, 80.0, 7.0)
    with pytest.raises(InputError, match="rho=0.5"):
        karras_sigmas(4, 0.002, 80.0, 0.5)
    with pytest.raises(InputError, match="rho=nan"):
        karras_sigmas(4, 0.002, 80.0, float("nan"))


def test_budget_bands_take_the_noisier_band_on_an_edge() -> None:
    budgets, edges = (12, 8, 0), (10.0, 1.0)
    assert budget_for_sigma(budgets, edges, 80.0) == 12
    assert budget_for_sigma(budgets, edges, 10.0) == 12  # on the edge: the noisier band
    assert budget_for_sigma(budgets, edges, 9.99) == 8
    assert budget_for_sigma(budgets, edges, 0.002) == 0


def test_a_take_depends_on_its_seed_only() -> None:
    batch = draw_all([5, 6, 7], (3, 4), num_draws=3)
    alone = draw_all([6], (3, 4), num_draws=3)
    for k in range(3):
        assert torch.equal(batch[k][1], alone[k][0])
    # draw_all is draw_noise called draw by draw on one set of generators.
    generators = make_generators([5, 6, 7])
    for k in range(3):
        assert torch.equal(draw_noise(generators, (3, 4)), batch[k])


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 10**30, 1.5, True, "3"])
def test_seeds_outside_the_generator_range_are_refused(seed) -> None:
    with pytest.raises(InputError, match="seed="):
        check_seed(seed)
    assert check_seed(SEED_MAX) == SEED_MAX


def test_tokenizer_ids_and_refusals() -> None:
    ids, mask = encode_bytes(["a", "é"], 6)
    assert ids.tolist() == [[100, 1, 0, 0, 0, 0], [0xC3 + 3, 0xA9 + 3, 1, 0, 0, 0]]
    assert mask.sum(axis=1).tolist() == [2, 3]
    for prompts, message in (([""], "empty"), (["abcdef"], "at most 5"), (["\udc80"], "surrogate")):
        with pytest.raises(InputError, match=message):
            encode_bytes(prompts, 6)
    with pytest.raises(ConfigError, match="max_tokens=1"):
        encode_bytes(["a"], 1)


def test_names() -> None:
    assert backend_name("onnxruntime") == "onnx" and set(BACKENDS) == {"onnx", "tensorrt", "torch"}
    assert torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(ConfigError, match="'fp8'"):
        torch_dtype("fp8")
    with pytest.raises(ConfigError, match="'banana'"):
        backend_name("banana")


def test_wavs_report_clipping_and_normalize_on_request(tmp_path, caplog) -> None:
    audio = np.zeros((2, 2, 100), dtype=np.float32)
    audio[0, 0, :10] = 1.5  # L = M + w S past full scale
    audio[1, 1, :5] = -0.5
    paths = [tmp_path / "a_0.wav", tmp_path / "a_1.wav"]
    with caplog.at_level(logging.WARNING, logger="presto"):
        cli.write_wavs(paths, audio, 44100)
    assert "10 of 400 samples exceed full scale" in caplog.text and "--normalize" in caplog.text
    clipped, _ = soundfile.read(str(paths[0]), always_2d=True)
    assert clipped.max() <= 1.0

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="presto"):
        cli.write_wavs(paths, audio, 44100, normalize=True)
    assert "exceed" not in caplog.text
    for path, take in zip(paths, audio):
        data, _ = soundfile.read(str(path), always_2d=True)
        assert np.abs(data).max() == pytest.approx(cli.NORMALIZE_PEAK, abs=1e-4)
        # one gain per take: the shape of the waveform is kept
        assert np.allclose(data.T / np.abs(data).max(), take / np.abs(take).max(), atol=1e-4)

    cli.write_wavs(paths[:1], audio[:1], 44100, float_wav=True)
    kept, _ = soundfile.read(str(paths[0]), always_2d=True)
    assert kept.max() == pytest.approx(1.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_0.wav", "a_1.wav"]  # no partials


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"\xff\xfe{}", "not UTF-8"), (b"{not json", "not valid JSON")],
)
def test_read_json_turns_bad_files_into_one_line(tmp_path, content: bytes, reason: str) -> None:
    from presto_common.files import read_json

    path = tmp_path / "manifest.json"
    path.write_bytes(content)
    with pytest.raises(ArtifactError, match=f"{reason}.*; rebuild it") as err:
        read_json(path, ArtifactError, missing="gone", fix="rebuild it")
    assert "\n" not in str(err.value)
    with pytest.raises(ArtifactError, match="^gone$"):
        read_json(tmp_path / "absent.json", ArtifactError, missing="gone", fix="rebuild it")


def test_fill_draws_writes_draw_all_into_a_given_buffer() -> None:
    """fill_draws is the rule draw_all applies (draw_all calls it), written over whatever the buffer
    held; a buffer of the wrong rows or dtype is refused before any draw."""
    out = torch.full((3, 2, 3, 4), float("nan"))
    fill_draws([5, 7], out)
    generators = make_generators([5, 7])
    for k in range(3):
        assert torch.equal(out[k], draw_noise(generators, (3, 4)))
    with pytest.raises(InputError, match=r"expected float32 \(num_draws, 3, \*item_shape\)"):
        fill_draws([1, 2, 3], out)
    with pytest.raises(InputError, match="float64"):
        fill_draws([1, 2], out.double())
