"""The per-stage runtime API (`Pipeline.bucket`): `python -m pytest tests/runtime/test_bucket.py`.

Runs the tiny ping-pong build of tests/runtime/conftest.py on ONNX Runtime's CPU provider.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import runtime
from presto_common.errors import InputError, ShapeError
from runtime import Bucket, Pipeline

FRAMES = 46  # 1 s at 44.1 kHz, hop 960


@pytest.fixture(scope="module")
def pipe(build: Path) -> Pipeline:
    return Pipeline(build, backend="onnxruntime", device="cpu")


def test_bucket_describes_what_it_runs(pipe: Pipeline) -> None:
    bucket = pipe.bucket(2, duration_s=1.0)
    assert isinstance(bucket, Bucket) and pipe.bucket(2, duration_s=1.0) is bucket  # cached
    m = pipe.manifest
    assert (bucket.batch, bucket.frames, bucket.dit_batch) == (2, FRAMES, 2)
    assert bucket.duration_s == pytest.approx(FRAMES * 960 / 44_100)
    assert bucket.sigmas == m.sampler.sigmas and bucket.budgets == m.sampler.step_budgets
    assert bucket.sampler_kind == "ping-pong" and bucket.cfg_scale is None
    assert bucket.dit_calls == tuple(zip(bucket.sigmas, bucket.budgets)) and bucket.num_draws == 4
    assert sorted(bucket.artifacts) == ["dit", "stereo", "text_encoder", "vae_decoder"]
    assert [a.budget for a in bucket.artifacts["dit"]] == sorted(set(bucket.budgets))
    assert all(a.batch == 2 and a.frames == FRAMES for a in bucket.artifacts["dit"])
    assert pipe.built_buckets() == [(1, FRAMES), (2, FRAMES)] and pipe.built_batches() == [1, 2]
    assert not pipe.bucket(1, duration_s=1.0, stereo=False).artifacts.get("stereo")


def test_run_equals_the_stages_chained(pipe: Pipeline) -> None:
    bucket = pipe.bucket(2, duration_s=1.0)
    text, mask = bucket.encode_text(["a", "b c"])
    assert text.shape[:2] == mask.shape and mask.dtype == torch.bool and text.shape[0] == 2
    noise = bucket.noise([5, 6])
    assert len(noise) == 4 and noise[0].shape == (2, 32, FRAMES)
    bpm, width = torch.full((2,), 100.0), torch.tensor([1.0, 0.5])
    latents, audio = bucket.run(text, mask, bpm, width, noise)
    staged = bucket.sample(text, mask, bpm, noise)
    mono = bucket.decode(staged)
    stereo = bucket.to_stereo(mono, width)
    # The same engines on the same inputs in the same order: equal bit for bit.
    assert torch.equal(latents, staged) and torch.equal(audio, stereo)
    assert audio.shape == (2, 2, FRAMES * 960) and mono.shape == (2, 1, FRAMES * 960)
    # generate() is bucket.run on the same text, noise, BPM and width.
    got = pipe.generate(["a", "b c"], seeds=[5, 6], bpm=100.0, duration_s=1.0, width=0.5)
    _, audio_half = bucket.run(text, mask, bpm, torch.full((2,), 0.5), noise)
    assert torch.equal(torch.from_numpy(got.samples), audio_half)


def test_bad_bucket_requests(pipe: Pipeline) -> None:
    with pytest.raises(InputError, match="cfg_scale=0.5: guidance applies to the dpmpp-2s"):
        pipe.bucket(1, duration_s=1.0, cfg_scale=0.5)
    with pytest.raises(InputError, match="batch=0 must be an integer >= 1"):
        pipe.bucket(0, duration_s=1.0)
    bucket = pipe.bucket(1, duration_s=1.0, stereo=False)
    with pytest.raises(ShapeError, match="got 2 prompts for a batch-1 bucket"):
        bucket.encode_text(["a", "b"])
    with pytest.raises(ShapeError, match="got 2 seeds for a batch-1 bucket"):
        bucket.noise([0, 1])
    text, mask = bucket.encode_text(["a"])
    with pytest.raises(ShapeError, match="got 1 noise tensors; this ping-pong bucket takes 4"):
        bucket.sample(text, mask, torch.full((1,), 120.0), bucket.noise([0])[:1])
    with pytest.raises(InputError, match="resolved with stereo=False"):
        bucket.to_stereo(torch.zeros(1, 1, FRAMES * 960), torch.ones(1))


def test_release_graphs_counts_captured_buckets(pipe: Pipeline) -> None:
    pipe.bucket(1, duration_s=1.0)
    assert pipe.release_graphs() == 0  # nothing is captured on the CPU


def test_public_names() -> None:
    for name in runtime.__all__:
        assert hasattr(runtime, name), name
    needed = {"Pipeline", "Bucket", "Audio", "Manifest", "Artifact", "TensorInfo"}
    needed |= {"SamplerDefaults", "MANIFEST_FILE", "SCHEMA_VERSION", "sha256_file"}
    assert needed | {"backend_available"} <= set(runtime.__all__)
    doc = ast.get_docstring(ast.parse(Path(runtime.__file__).read_text()))
    assert "not yet implemented" not in doc
