"""The runtime on ONNX Runtime's CPU provider against presto_ref.

Run: `python -m pytest tests/runtime/test_pipeline.py`.

The tiny build (ONNX only, batches 1 and 2, a 1 s bucket) comes from tests/runtime/conftest.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from presto_common.errors import ArtifactError, InputError, NumericalError, ShapeError
from presto_common.schedule import budget_for_sigma
from presto_ref.checkpoint import random_model
from presto_ref.pipeline import Request
from runtime.generate import main as generate_main
from runtime.packing import Take
from runtime.pipeline import Pipeline
from runtime.schedule import schedule

DURATION_S = 1.0  # 46 frames


@pytest.fixture(scope="module")
def reference():
    return random_model("tiny", 0).eval()


def ref_audio(model, prompts, seeds, **kw) -> np.ndarray:
    req = Request(prompts=tuple(prompts), seeds=tuple(seeds), duration_s=DURATION_S, **kw)
    return model.generate(req).numpy()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# fp32 engines on ORT's CPU provider against eager fp32 PyTorch, through 4 DiT steps, the decoder
# and the stereo model: each graph agrees to ~1e-6 (tests/export), and the chain compounds that to
# ~3e-6 (measured). 1e-4 is tight enough that a wrong sigma, budget, noise draw or step order (all
# of which change the audio completely) cannot pass.
BOUND = 1e-4


def test_runtime_reproduces_the_reference(build: Path, reference) -> None:
    pipe = Pipeline(build, backend="onnxruntime", device="cpu")
    audio = pipe.generate(["warm lofi piano"], seeds=[3], bpm=100, duration_s=DURATION_S)
    assert audio.sample_rate == 44_100 and audio.samples.shape == (1, 2, 46 * 960)
    assert rel(audio.samples, ref_audio(reference, ["warm lofi piano"], [3], bpm=100)) < BOUND


def test_onnx_runtime_sessions_do_not_spin(build: Path) -> None:
    # runtime/engines.py: ONNX Runtime's idle threads spinning after each run made the torch ops
    # between runs wait for the cores (the tiny build's generate: 76-83 ms against 27-28 on 2 cores)
    pipe = Pipeline(build, backend="onnx", device="cpu")
    pipe.generate(["spinning"], seeds=[0], bpm=100.0, duration_s=DURATION_S)
    sessions = [engine.session for engine in pipe._engines.values()]
    assert sessions, "the generate opened no ONNX Runtime session"
    for session in sessions:
        entry = "session.intra_op.allow_spinning"
        assert session.get_session_options().get_session_config_entry(entry) == "0"


def test_batch_mono_width_steps_and_rho(build: Path, reference) -> None:
    pipe = Pipeline(build, backend="auto", device="cpu")
    assert pipe.backend == "onnx"
    got = pipe.generate(["a", "b c"], seeds=[5, 6], duration_s=DURATION_S, stereo=False)
    assert rel(got.samples, ref_audio(reference, ["a", "b c"], [5, 6], stereo=False)) < BOUND
    got = pipe.generate(["a"], seeds=[5], duration_s=DURATION_S, width=0.3, num_steps=6, rho=3.0)
    want = ref_audio(reference, ["a"], [5], width=0.3, num_steps=6, rho=3.0)
    assert rel(got.samples, want) < BOUND
    # A take is the same alone and inside a batch.
    alone = pipe.generate(["b c"], seeds=[6], duration_s=DURATION_S, stereo=False).samples
    batch = pipe.generate(["a", "b c"], seeds=[5, 6], duration_s=DURATION_S, stereo=False).samples
    np.testing.assert_allclose(batch[1:], alone, atol=1e-5)


def test_default_duration_is_the_longest_built_bucket(build: Path) -> None:
    # The build holds 1 s buckets while the preset allows 10 s: no duration means what was built.
    audio = Pipeline(build, device="cpu").generate(["a"], seeds=[0], stereo=False)
    assert audio.samples.shape == (1, 1, 46 * 960)


def test_schedule_uses_the_manifest_defaults(build: Path) -> None:
    sampler = Pipeline(build, device="cpu").manifest.sampler
    assert schedule(sampler, None, None) == (list(sampler.sigmas), list(sampler.step_budgets))
    assert list(sampler.step_budgets) == [2, 1, 0, 0]
    sigmas, budgets = schedule(sampler, 2, None)
    assert sigmas == pytest.approx([80.0, 0.002]) and budgets == [
        budget_for_sigma(sampler.budgets, sampler.sigma_thresholds, s) for s in sigmas
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(prompts=[""]), InputError, "empty"),
        (dict(prompts=["x" * 200]), InputError, "200 UTF-8 bytes"),
        (dict(bpm=500.0), InputError, r"bpm=500.0 is outside \[40, 240\]"),
        (dict(duration_s=0.0), InputError, r"duration_s=0.0 must be in \(0, 10\]"),
        (
            dict(duration_s=2.0),
            ShapeError,
            r"duration_s=2 \(92 frames\) has no bucket at any batch in .*; the nearest built "
            r"duration is 1.00 s.*--durations-s 2.00",
        ),
        (dict(width=9.0), InputError, r"--width 9.0 is outside \[0, 4\]"),
        (dict(seeds=[-1]), InputError, r"seed=-1 must be an integer in \[0, 2\*\*63 - 1\]"),
        (dict(num_steps=0), InputError, "steps=0 must be an integer >= 1"),
        (dict(rho=0.5), InputError, "rho=0.5 must be >= 1"),
    ],
)
def test_bad_requests(build: Path, kwargs, error, message) -> None:
    pipe = Pipeline(build, device="cpu")
    call = dict(prompts=["a"], seeds=[0], duration_s=DURATION_S) | kwargs
    with pytest.raises(error, match=message):
        pipe.generate(call.pop("prompts"), **call)


def test_missing_budget_names_the_fix(build: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(build, partial)
    data = json.loads((partial / "manifest.json").read_text())
    data["artifacts"] = [a for a in data["artifacts"] if a["budget"] != 1]
    (partial / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(
        ShapeError, match=r"no DiT engine for budget 1 \(built: \[0, 2\]\).*--budgets 0,1,2"
    ):
        Pipeline(partial, device="cpu").generate(["a"], seeds=[0], duration_s=DURATION_S)


def test_foreign_and_corrupt_builds(build: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(build, other)
    data = json.loads((other / "manifest.json").read_text())
    data["schema_version"] = 99
    (other / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        Pipeline(other, device="cpu")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(build, corrupt)
    victim = next(corrupt.glob("vae_decoder*.onnx"))
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match=f"{victim.name} is corrupt"):
        Pipeline(corrupt, device="cpu").generate(["a"], seeds=[0], duration_s=DURATION_S)


def test_nan_in_an_engine_output_is_refused(build: Path, monkeypatch) -> None:
    pipe = Pipeline(build, device="cpu")
    # An engine that returns NaN stands in for the decoder before the bucket loads it.
    decoder = pipe.artifact("vae_decoder", 1, 46).file
    monkeypatch.setitem(
        pipe._engines, decoder, lambda *a: (torch.full((1, 1, 46 * 960), float("nan")),)
    )
    with pytest.raises(NumericalError, match="NaN or Inf"):
        pipe.generate(["a"], seeds=[0], duration_s=DURATION_S)


def test_cli_writes_takes(build: Path, tmp_path: Path, reference) -> None:
    out = tmp_path / "take.wav"
    assert (
        generate_main(
            [
                "warm lofi piano",
                "--engines",
                str(build),
                "-o",
                str(out),
                "--duration-s",
                "1",
                "--num-takes",
                "2",
                "--seed",
                "3",
                "--float-wav",
                "--bpm",
                "100",
            ]
        )
        == 0
    )
    data, sr = soundfile.read(str(tmp_path / "take_0.wav"))
    assert sr == 44_100 and data.shape == (46 * 960, 2)
    want = ref_audio(reference, ["warm lofi piano"], [3], bpm=100)[0].T
    assert rel(data, want) < BOUND


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["", "--duration-s", "1"], "empty"),
        (["x", "--duration-s", "1", "--bpm", "10"], "bpm=10.0"),
        # the hint is the whole command: the model, the new duration beside the built one, the
        # folder (--num-takes past the largest batch runs in several calls: tests/runtime/
        # test_packing.py)
        (
            ["x", "--duration-s", "3", "--num-takes", "3"],
            r"138 frames\) has no bucket at any batch.*--preset tiny .*--batch-sizes 1,2 "
            r"--durations-s 3.00,1.00 .*--out",
        ),
        (["x", "--duration-s", "1", "--backend", "tensorrt"], "TensorRT|CUDA GPU"),
        (["x", "--duration-s", "1", "--cfg", "0.5"], "guidance applies to the dpmpp-2s"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(
    build: Path, tmp_path: Path, capsys, args, message
) -> None:
    out = tmp_path / "o.wav"
    assert generate_main([args[0], "--engines", str(build), "-o", str(out), *args[1:]]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert list(tmp_path.iterdir()) == []


def test_pinned_is_ignored_on_the_cpu(build: Path) -> None:
    """pinned=True asks for page-locked samples on CUDA only: on the CPU the same audio comes back
    in ordinary memory (the server passes it on every device)."""
    pipe = Pipeline(build, device="cpu")
    takes = [Take("warm lofi piano", 3), Take("driving techno", 4, bpm=128.0)]
    np.testing.assert_array_equal(
        pipe.generate_takes(takes, pinned=True).samples, pipe.generate_takes(takes).samples
    )
