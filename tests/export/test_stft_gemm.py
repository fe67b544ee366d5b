"""The log-mel STFT as a GEMM keeps the maths: `python -m pytest tests/export/test_stft_gemm.py`.

Both forms sum the same 1024 fp32 products per bin in a different order, so they differ by fp32
rounding: at the paper's config the magnitudes measured 5.0e-7 relative L2 apart, the conv 4.8e-7
and the GEMM 1.9e-7 from float64. The bounds below (1e-5 apart, 2e-6 from float64, 1e-4 in the log
domain) are fp32 rounding with room; a wrong frame offset, hop or real/imaginary split is O(1).
"""

from __future__ import annotations

import pytest
import torch

from export.spec import export_model, graph_for
from export.stft_gemm import gemm_magnitude, stft_as_gemm
from presto_ref.checkpoint import random_model
from presto_ref.config import StereoConfig
from presto_ref.stereo import MelFrontEnd


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@pytest.mark.parametrize("cfg", [StereoConfig(), StereoConfig(n_fft=512, num_mels=32, width=32)])
def test_the_gemm_is_the_conv_at_fp32_rounding(
    cfg: StereoConfig, stft_audio, float64_stft_magnitude
) -> None:
    front = MelFrontEnd(cfg, 44100)
    audio = stft_audio(184, cfg.hop_length)
    with torch.no_grad():
        conv, gemm = front.magnitude(audio), gemm_magnitude(front, audio)
        exact = float64_stft_magnitude(front, audio)
    assert gemm.shape == conv.shape == (3, cfg.n_fft // 2 + 1, 184)
    assert rel_l2(gemm, conv) < 1e-5
    assert rel_l2(conv, exact) < 2e-6 and rel_l2(gemm, exact) < 2e-6


def test_the_swap_reaches_the_log_mel_and_is_undone(stft_audio) -> None:
    front = MelFrontEnd(StereoConfig(), 44100)
    audio = stft_audio(92, 240)
    with torch.no_grad():
        before = front(audio)
        with stft_as_gemm(front) as switched:
            assert switched == 1 and "magnitude" in vars(front)
            during = front(audio)
        after = front(audio)
    assert "magnitude" not in vars(front)
    assert torch.equal(after, before)
    assert not torch.equal(during, before)  # the GEMM did run: its rounding differs
    assert (during - before).abs().max().item() < 1e-4  # log-mel, natural log


def test_the_stereo_graph_loses_its_conv_and_keeps_its_output() -> None:
    model = export_model(random_model("tiny", 0), "fp32")
    stereo, decoder = graph_for(model, "stereo"), graph_for(model, "vae_decoder")
    hop = model.config.stereo.hop_length
    mono = 0.2 * torch.randn(1, 1, 40 * hop, generator=torch.Generator().manual_seed(2))
    width = torch.ones(1)

    def convolutions(module: torch.nn.Module) -> int:
        graph = torch.export.export(module, (mono, width)).graph
        return sum(str(n.target).startswith("aten.conv") for n in graph.nodes)

    with torch.no_grad():
        want, n_conv = stereo(mono, width), convolutions(stereo)
        with stft_as_gemm(decoder) as none:
            assert none == 0
        with stft_as_gemm(model) as switched:
            assert switched == 1
            got, n_gemm = stereo(mono, width), convolutions(stereo)
    assert n_gemm == n_conv - 1
    assert rel_l2(got, want) < 1e-5


def test_an_aotinductor_package_of_the_gemm_form_matches(tmp_path) -> None:
    # The CUDA build compiles this form; the CPU compile checks that Inductor takes the unfolded
    # frames (an overlapping view) and that the package computes what the module does.
    from export.torch_backend import compile_package

    model = export_model(random_model("tiny", 0), "fp32")
    stereo = graph_for(model, "stereo")
    hop = model.config.stereo.hop_length
    mono = 0.2 * torch.randn(1, 1, 40 * hop, generator=torch.Generator().manual_seed(2))
    width = torch.ones(1)
    with torch.no_grad():
        want = stereo(mono, width)
        with stft_as_gemm(model):
            compile_package(stereo, (mono, width), tmp_path / "stereo.pt2", device="cpu")
    (got,) = torch._inductor.aoti_load_package(str(tmp_path / "stereo.pt2"))(mono, width)
    assert rel_l2(got, want) < 1e-5
