"""The reference on CUDA against the CPU: `python -m pytest -m gpu tests/presto_ref/test_gpu.py`.

Skipped with a reason where no CUDA device is present.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from presto_ref.checkpoint import random_model
from presto_ref.pipeline import Request

pytestmark = pytest.mark.gpu

REQUEST = Request(prompts=("warm lofi piano",), seeds=(3,), duration_s=2.0)


@pytest.fixture(scope="module")
def cpu_audio() -> torch.Tensor:
    return random_model("tiny", 0).eval().generate(REQUEST)


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def snr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    return (10 * torch.log10(reference.pow(2).sum() / (reference - test).pow(2).sum())).item()


def test_cuda_fp32_matches_cpu(cpu_audio: torch.Tensor) -> None:
    audio = random_model("tiny", 0).cuda().eval().generate(REQUEST).cpu()
    # Noise is drawn on the CPU, so only kernel rounding differs: fp32 sums in another order give
    # relative errors near 1e-6 per op; through 4 DiT steps and two conv stacks we allow 1e-4.
    rel = ((audio - cpu_audio).norm() / cpu_audio.norm()).item()
    assert rel < 1e-4, f"relative L2 error {rel:.2e}"


def test_cuda_bf16_is_close_to_fp32(cpu_audio: torch.Tensor) -> None:
    audio = (
        random_model("tiny", 0).to("cuda", torch.bfloat16).eval().generate(REQUEST).float().cpu()
    )
    assert audio.isfinite().all()
    # bf16 keeps 8 bits of mantissa (about 48 dB per op); a chain of ~100 layers loses some of it.
    # 15 dB SNR still proves the same audio; a dtype bug (wrong cast, fp32-only op) gives ~0 dB.
    snr = snr_db(cpu_audio, audio)
    assert snr > 15, f"bf16 SNR {snr:.1f} dB"


def test_cuda_take_does_not_depend_on_the_batch() -> None:
    model = random_model("tiny", 0).cuda().eval()
    alone = model.generate(REQUEST)
    batch = model.generate(
        dataclasses.replace(REQUEST, prompts=("x", *REQUEST.prompts), seeds=(9, 3))
    )
    torch.testing.assert_close(batch[1:], alone, rtol=1e-4, atol=1e-5)
