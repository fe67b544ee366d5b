"""The log-mel front end's STFT as one fp32 GEMM over its frames, for the CUDA torch packages.

`presto_ref.stereo.MelFrontEnd` computes the STFT as conv1d(padded audio, bases, stride=hop) in
fp32 (an fp32 island of the bf16 model). One input channel and a 1024-tap kernel at stride 240 is
a shape cuDNN serves poorly: on the H200 it ran `sm80_xmma_fprop_implicit_gemm_indexed_f32f32_...
_nchw` on CUDA cores, 0.92 of the stereo package's 13.5 ms of kernels at batch 1 and 61.3 of 884 ms
at 64 (12.4 GFLOP a take, about 13 TFLOP/s; docs/measurements.md, 4cfd3d1 profiles). The same sum
is a GEMM of the frames (B, T_mel, n_fft), an unfold of the padded audio, with the bases
(n_fft, 2F), which cuBLAS runs as one fp32 SGEMM (TF32 stays off: torch's default for matmuls).

`stft_as_gemm(module)` gives every MelFrontEnd under `module` that form within the block, and
restores the conv on exit, so the ONNX export of the same model keeps the convolution (TensorRT
chooses its own kernel for it). Only the CUDA torch build uses it (export/builders.py). On the
H200 at 6fe7ab7 the GEMM took 0.31 ms at batch 1 and about 18.5 ms at 64 (benchmarks.profile,
benchmarks/baselines/h200-profile-presto-ls-bf16-b*-6fe7ab7.json).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presto_ref.stereo import MAGNITUDE_EPS, MelFrontEnd


def gemm_magnitude(front: MelFrontEnd, audio: Tensor) -> Tensor:
    """|STFT| (B, F, T / hop) of audio (B, 1, T) as MelFrontEnd.magnitude, through a GEMM.

    frames[b, t] = padded[b, t * hop : t * hop + n_fft]; spec = frames @ bases^T, (B, T_mel, 2F);
    real rows first, then imaginary, as in the bases. The caller validates the shape (MonoToStereo
    does, and an exported graph's shapes are fixed).
    """
    pad = (front.n_fft - front.hop_length) // 2
    padded = F.pad(audio.float(), (pad, pad), mode="reflect")[:, 0]  # (B, T + n_fft - hop)
    frames = padded.unfold(-1, front.n_fft, front.hop_length)  # (B, T_mel, n_fft), overlapping
    spec = torch.matmul(frames, front.bases[:, 0].t())  # (B, T_mel, 2F) fp32
    real, imag = spec[..., : front.num_bins], spec[..., front.num_bins :]
    return torch.sqrt(real.pow(2) + imag.pow(2) + MAGNITUDE_EPS).transpose(1, 2)


@contextmanager
def stft_as_gemm(module: nn.Module) -> Iterator[int]:
    """Within the block, every MelFrontEnd under `module` computes its STFT with
    `gemm_magnitude`; yields how many were switched."""
    fronts = [m for m in module.modules() if isinstance(m, MelFrontEnd)]
    for front in fronts:
        front.magnitude = types.MethodType(gemm_magnitude, front)  # an instance attribute
    try:
        yield len(fronts)
    finally:
        for front in fronts:
            del front.magnitude  # the class's conv form again
