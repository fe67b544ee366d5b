"""End-to-end reference generation on the tiny preset.

Run: `python -m pytest tests/presto_ref/test_pipeline.py`.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from presto_common.errors import ConfigError, InputError
from presto_ref.pipeline import Request, validate_request

DURATION_S = 1.0  # 46 frames: long enough for every stage, short enough for the CPU


def request(**changes) -> Request:
    base = Request(prompts=("warm lofi piano",), seeds=(0,), duration_s=DURATION_S)
    return dataclasses.replace(base, **changes)


def test_output_shape_and_range(tiny_model) -> None:
    audio = tiny_model.generate(request())
    frames = tiny_model.config.frames_for_duration(DURATION_S)
    assert audio.shape == (1, 2, frames * 960)
    assert audio.dtype == torch.float32
    assert audio.isfinite().all() and audio.abs().max() <= 2.0  # mid + side, each in [-1, 1]
    mono = tiny_model.generate(request(stereo=False))
    assert mono.shape == (1, 1, frames * 960)
    # The stereo downmix is exactly the mono output of the same request.
    torch.testing.assert_close(audio.mean(dim=1, keepdim=True), mono, rtol=0, atol=1e-6)


def test_same_seed_same_audio_alone_and_in_a_batch(tiny_model) -> None:
    batch = tiny_model.generate(request(prompts=("a", "warm lofi piano", "b"), seeds=(5, 0, 9)))
    alone = tiny_model.generate(request())
    # Same maths per item; batched matmuls may round differently, so float rounding is allowed.
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-4, atol=1e-5)
    again = tiny_model.generate(request())
    assert torch.equal(alone, again)
    other_seed = tiny_model.generate(request(seeds=(1,)))
    assert (other_seed - alone).abs().max() > 1e-2


def test_prompt_and_bpm_change_the_audio(tiny_model) -> None:
    base = tiny_model.generate(request(stereo=False))
    for changed in (
        request(prompts=("heavy metal",), stereo=False),
        request(bpm=170.0, stereo=False),
    ):
        assert (tiny_model.generate(changed) - base).abs().max() > 1e-3


def test_base_model_sampler_runs(tiny_model) -> None:
    audio = tiny_model.generate(
        request(sampler="dpmpp-2s", num_steps=3, cfg_scale=0.8, stereo=False)
    )
    assert audio.shape[-1] == tiny_model.config.frames_for_duration(DURATION_S) * 960
    assert audio.isfinite().all()


def test_rho_changes_the_schedule(tiny_model) -> None:
    a = tiny_model.generate(request(rho=7.0, stereo=False))
    b = tiny_model.generate(request(rho=1000.0, stereo=False))
    assert (a - b).abs().max() > 1e-3


def test_duration_rounds_to_whole_frames(tiny_model) -> None:
    cfg = tiny_model.config
    assert cfg.frames_for_duration(32.0) == 1470
    assert cfg.frames_for_duration(1.0) == 46  # 44100 / 960 = 45.94
    assert cfg.duration_for_frames(46) == pytest.approx(46 * 960 / 44100)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (dict(bpm=10.0), InputError, r"bpm=10.0 is outside \[40, 240\]"),
        (dict(bpm=float("nan")), InputError, "bpm=nan"),
        (dict(duration_s=0.0), InputError, "duration_s=0.0 must be a positive"),
        (dict(duration_s=60.0), InputError, "exceeds the tiny maximum of 10 s"),
        (dict(duration_s=0.001), InputError, "shorter than one latent frame"),
        (dict(seeds=(0, 1)), InputError, "1 prompts and 2 seeds"),
        (dict(rho=0.5), ConfigError, "rho=0.5 must be >= 1"),
        (dict(num_steps=0), ConfigError, "num_steps=0 must be >= 1"),
        (dict(sampler="euler"), ConfigError, "sampler.kind='euler'"),
    ],
)
def test_bad_requests_are_refused(tiny_model, changes, error, message) -> None:
    with pytest.raises(error, match=message):
        validate_request(tiny_model.config, request(**changes))
