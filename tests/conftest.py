"""Shared fixtures and the automatic skips for the `gpu` and `trt` markers.

Run everything: `python -m pytest`. The device suite alone: `python -m pytest -m "gpu or trt"`.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

# Polygraphy binds to TensorRT or TensorRT-RTX once per process, when it is first imported, and
# several test modules import it (ONNX folding, engine builds). Where RTX is the only TensorRT
# installed, bind it to RTX before any test runs, so the outcome does not depend on test order.
if (
    importlib.util.find_spec("tensorrt") is None
    and any(importlib.util.find_spec(m) for m in ("tensorrt_rtx", "tensorrt_rtx_bindings"))
    and "polygraphy.config" not in sys.modules
):
    os.environ.setdefault("POLYGRAPHY_USE_TENSORRT_RTX", "1")


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return (
        None if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available() is False)"
    )


def _trt_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") or importlib.util.find_spec("tensorrt_rtx"):
        return None
    return "neither tensorrt nor tensorrt_rtx is importable"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"gpu": _cuda_reason(), "trt": _trt_reason()}
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"needs {marker}: {reason}"))


@pytest.fixture(scope="session")
def calibrations(tmp_path_factory) -> dict:
    """ "int8" / "fp8" -> a calibration folder of the tiny preset (seed-0 weights) written by
    `python -m calibration.calibrate`: 1 s of audio, three of the shipped prompts and one seed,
    which covers every budget of the tiny schedule (2, 1, 0) in a few seconds. Skips the test, with
    the pip line, where ModelOpt cannot be imported."""
    from calibration.recipes import import_modelopt
    from presto_common.errors import BackendUnavailable

    try:
        import_modelopt()
    except BackendUnavailable as err:
        pytest.skip(str(err))
    from calibration.calibrate import main
    from calibration.trajectories import PROMPTS_FILE, read_prompts

    root = tmp_path_factory.mktemp("calibration")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(read_prompts(PROMPTS_FILE)[:3]) + "\n")
    out = {}
    for precision in ("int8", "fp8"):
        out[precision] = root / precision
        argv = ["--preset", "tiny", "--precision", precision, "--duration-s", "1"]
        argv += ["--prompts", str(prompts), "--seeds", "1", "-o", str(out[precision]), "-q"]
        assert main(argv) == 0, f"calibration failed: {argv}"
    return out


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny preset with seeded random weights, fp32 on the CPU, in eval mode."""
    from presto_ref.checkpoint import random_model

    return random_model("tiny", seed=0).eval()


@pytest.fixture(scope="session")
def stft_audio():
    """(frames, hop) -> three takes (3, 1, frames * hop) fp32 on the CPU: uniform noise with a
    quiet 440 Hz tone, the second take 60 dB down (the STFT tests' input)."""
    import math

    import torch

    def make(frames: int, hop: int):
        g = torch.Generator().manual_seed(0)
        t = torch.arange(frames * hop) / 44100
        audio = 0.5 * torch.rand(3, 1, frames * hop, generator=g) - 0.25
        audio = audio + 1e-3 * torch.sin(2 * math.pi * 440 * t)
        audio[1] *= 1e-3
        return audio

    return make


@pytest.fixture(scope="session")
def float64_stft_magnitude():
    """(front, audio) -> MelFrontEnd.magnitude computed in float64 on the CPU, the exact
    reference for the fp32 STFT forms (tests/export/test_stft_gemm.py and its gpu twin)."""
    import torch
    import torch.nn.functional as F

    from presto_ref.stereo import MAGNITUDE_EPS, stft_bases

    def magnitude(front, audio):
        pad = (front.n_fft - front.hop_length) // 2
        padded = F.pad(audio.detach().cpu().double(), (pad, pad), mode="reflect")
        spec = F.conv1d(padded, stft_bases(front.n_fft), stride=front.hop_length)
        real, imag = spec[:, : front.num_bins], spec[:, front.num_bins :]
        return torch.sqrt(real**2 + imag**2 + MAGNITUDE_EPS)

    return magnitude
