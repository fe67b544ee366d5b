"""The runtime's samplers against presto_ref's: `python -m pytest tests/runtime/test_sampling.py`.

The loops with one fake denoiser (bit for bit), then a tiny DPM-Solver++(2S) + CFG++ checkpoint
built to ONNX (tests/runtime/conftest.py) and run on ONNX Runtime's CPU provider against
`Presto.generate`, with the DiT's conditional and unconditional passes in one call at 2B and in two
at B.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from presto_common.errors import ArtifactError, InputError, ShapeError
from presto_common.noise import draw_all, make_generators
from presto_ref import sampling as ref
from presto_ref.pipeline import Request
from runtime import Pipeline
from runtime.sampling import dpmpp_2s_cfgpp, evaluations, ping_pong

SHAPE = (3, 8)  # (C_lat, T_lat) of the fake-denoiser tests
SIGMAS = [80.0, 9.7, 0.47, 0.002]


def fake_x0(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A nonlinear stand-in for D(x; sigma) that depends on both x and sigma."""
    return torch.tanh(x / (1 + sigma)) * 0.9 + 0.01 * sigma


def test_ping_pong_matches_the_reference_bit_for_bit() -> None:
    seeds = [3, 4]
    want = ref.ping_pong(
        fake_x0, SIGMAS, generators=make_generators(seeds), item_shape=SHAPE, device="cpu"
    )
    got = ping_pong(lambda x, s, b: fake_x0(x, s), SIGMAS, [0] * 4, draw_all(seeds, SHAPE, 4))
    assert torch.equal(got, want)


def test_dpmpp_2s_cfgpp_matches_the_reference_bit_for_bit() -> None:
    seeds, guidance = [3, 4], 0.8
    seen: list[tuple[float, int]] = []

    def guided(x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        return fake_x0(x, sigma), fake_x0(0.5 * x, sigma)  # (D_c, D_u)

    def guided_at(x: torch.Tensor, sigma: float, budget: int):
        seen.append((sigma, budget))
        return guided(x, sigma)

    want = ref.dpmpp_2s_cfgpp(
        guided,
        SIGMAS,
        guidance=guidance,
        generators=make_generators(seeds),
        item_shape=SHAPE,
        device="cpu",
    )
    calls = evaluations("dpmpp-2s", SIGMAS, [2, 1, 0, 0], (2, 1, 0), (20.0, 1.0))
    (z,) = draw_all(seeds, SHAPE, 1)
    assert torch.equal(dpmpp_2s_cfgpp(guided_at, calls, SIGMAS, z, guidance), want)
    # Every step but the last also evaluates at the midpoint sigma_s = sqrt(sigma_i sigma_i+1),
    # whose budget comes from the same bands.
    assert seen == calls and len(calls) == 2 * len(SIGMAS) - 1
    assert calls[1] == (pytest.approx((80.0 * 9.7) ** 0.5), 2)  # 27.9: above 20, band 0
    assert calls[3] == (pytest.approx((9.7 * 0.47) ** 0.5), 1)  # 2.1: in [1, 20), band 1


# --- a built dpmpp-2s checkpoint --------------------------------------------------------------------

DURATION_S = 1.0  # 46 frames
PROMPTS = ["warm lofi piano", "b c"]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# fp32 engines on ORT's CPU provider against eager fp32 PyTorch: each graph agrees to ~1e-6 relative
# L2 (tests/export), and 3 solver steps make 5 guided D evaluations (2 per step, 1 for the last) plus
# the decoder and the stereo model. The solver mixes each D linearly with the state (CFG++ with
# lambda in [0, 1] does not extrapolate), so errors add rather than grow: 2.5e-6 to 5e-6 was measured. 1e-4,
# as for ping-pong (tests/runtime/test_pipeline.py), still fails for a wrong midpoint, budget, null
# condition, guidance or noise draw, each of which changes the audio by far more than 1e-2.
BOUND = 1e-4


def test_dpmpp_2s_build_reproduces_the_reference(
    dpmpp_build: Path, dpmpp_model, split_layouts, tmp_path: Path
) -> None:
    B, one_call, two_calls = split_layouts(dpmpp_build, tmp_path)
    prompts, seeds = PROMPTS[:B] + ["x"] * (B - 2), list(range(7, 7 + B))
    request = Request(
        prompts=tuple(prompts), seeds=tuple(seeds), bpm=100.0, duration_s=DURATION_S, width=0.7
    )
    want = dpmpp_model.generate(request).numpy()
    got = {}
    for name, folder in (("one call", one_call), ("two calls", two_calls)):
        pipe = Pipeline(folder, backend="onnxruntime", device="cpu")
        bucket = pipe.bucket(B, DURATION_S)
        assert bucket.sampler_kind == "dpmpp-2s" and bucket.num_draws == 1
        assert bucket.dit_batch == (2 * B if name == "one call" else B)
        assert len(bucket.dit_calls) == (1 if name == "one call" else 2) * (2 * 3 - 1)
        assert bucket.cfg_scale == pytest.approx(dpmpp_model.config.sampler.cfg_scale)
        audio = pipe.generate(prompts, seeds=seeds, bpm=100.0, duration_s=DURATION_S, width=0.7)
        got[name] = audio.samples
        assert rel(got[name], want) < BOUND, name
    # The two layouts run the same fp32 graphs on the same rows, at batch 2B or B: only the kernels'
    # batch-dependent blocking differs, compounded over 5 guided evaluations; 4.6e-6 relative L2
    # was measured. 5e-5 keeps a 10x margin and still fails for swapped or mixed-up cond/uncond
    # rows, which move the audio by the guidance term (orders of magnitude more).
    assert rel(got["one call"], got["two calls"]) < 5e-5


def test_dpmpp_2s_guidance_override(dpmpp_build: Path, dpmpp_model) -> None:
    pipe = Pipeline(dpmpp_build, backend="onnxruntime", device="cpu")
    request = Request(prompts=("a",), seeds=(1,), duration_s=DURATION_S, cfg_scale=0.3)
    got = pipe.generate(["a"], seeds=[1], duration_s=DURATION_S, cfg_scale=0.3).samples
    assert rel(got, dpmpp_model.generate(request).numpy()) < BOUND  # bound: as above
    with pytest.raises(InputError, match=r"cfg_scale=1.5 must be in \[0, 1\]"):
        pipe.generate(["a"], seeds=[1], duration_s=DURATION_S, cfg_scale=1.5)


def test_dpmpp_2s_missing_bucket_names_the_request_batch(dpmpp_build: Path) -> None:
    pipe = Pipeline(dpmpp_build, backend="onnxruntime", device="cpu")
    with pytest.raises(
        ShapeError, match=r"dpmpp-2s request of batch 3, 46 frames.*--batch-sizes 3"
    ):
        pipe.bucket(3, DURATION_S)
    # Built buckets and default durations count request batches, whatever batch the DiT has.
    assert pipe.built_batches() == [1, 2] and pipe.built_frames(1) == [46]
    assert pipe.bucket(1).frames == 46


def test_unknown_sampler_kind_is_refused(build: Path, tmp_path: Path) -> None:
    folder = tmp_path / "euler"
    shutil.copytree(build, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data["sampler"]["kind"] = "euler"
    (folder / "manifest.json").write_text(json.dumps(data))
    pipe = Pipeline(folder, backend="onnxruntime", device="cpu")
    with pytest.raises(
        ArtifactError, match=r"sampler kind 'euler' is not one this runtime runs"
    ) as e:
        pipe.generate(["a"], seeds=[0], duration_s=DURATION_S)
    assert "--preset tiny" in str(e.value) and f"--out {folder}" in str(e.value)  # pasteable
