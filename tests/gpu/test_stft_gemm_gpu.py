"""The log-mel STFT as an fp32 GEMM on CUDA: the conv's result at fp32 rounding, eager and compiled.

    python -m pytest -q -rs -m gpu tests/gpu/test_stft_gemm_gpu.py

TF32 is off for both forms: the front end is an fp32 island, and the build keeps torch's defaults
for matmuls (TF32 off). Bounds as in tests/export/test_stft_gemm.py (CPU: 5.0e-7 apart, each
within 4.8e-7 of float64): fp32 rounding with room; a wrong frame, hop or split is O(1).
"""

from __future__ import annotations

import pytest
import torch

from export.stft_gemm import gemm_magnitude, stft_as_gemm
from presto_ref.config import StereoConfig
from presto_ref.stereo import MelFrontEnd


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_the_gemm_is_the_conv_on_cuda(fp32_only, stft_audio, float64_stft_magnitude) -> None:
    front = MelFrontEnd(StereoConfig(), 44100)
    audio = stft_audio(184, 240)
    exact = float64_stft_magnitude(front, audio)
    front, audio = front.cuda(), audio.cuda()
    with torch.no_grad():
        conv, gemm = front.magnitude(audio).cpu(), gemm_magnitude(front, audio).cpu()
    assert rel_l2(gemm, conv) < 1e-5
    assert rel_l2(conv, exact) < 2e-6 and rel_l2(gemm, exact) < 2e-6


def test_a_cuda_package_of_the_paper_front_end_matches(fp32_only, stft_audio, tmp_path) -> None:
    from export.torch_backend import compile_package

    front = MelFrontEnd(StereoConfig(), 44100).cuda()
    audio = stft_audio(184, 240).cuda()
    with torch.no_grad():
        want = front(audio)
        with stft_as_gemm(front):
            compile_package(front, (audio,), tmp_path / "mel.pt2", device="cuda")
    # The front end returns one tensor, and a package of it returns that tensor (not a 1-tuple).
    got = torch._inductor.aoti_load_package(str(tmp_path / "mel.pt2"))(audio)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert (got - want).abs().max().item() < 1e-4  # log-mel, natural log
