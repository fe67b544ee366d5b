"""runtime/fp8_attention.py on CUDA: cuDNN's FP8 attention (`presto::attention_fp8`) against the op's
fp32 reference on the same E4M3 inputs, eagerly and replayed from a torch CUDA graph.

    python -m pytest -q -rs -m gpu tests/gpu/test_fp8_attention_gpu.py   # needs nvidia-cudnn-frontend

At the DiT's attention shape with the heads padded to 80: 2 rows, 16 heads, 1470 audio queries,
1470 + 128 keys of which 1490 and 1475 are valid (text padding is a suffix of the keys). Not yet
run on a GPU.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from runtime.fp8_attention import quantize_fp8, reference_attention_fp8

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        importlib.util.find_spec("cudnn") is None,
        reason="needs nvidia-cudnn-frontend (pip install nvidia-cudnn-frontend==1.32.0)",
    ),
]

B, H, T, S, D = 2, 16, 1470, 1598, 80
SCALE = 72**-0.5


def inputs():
    g = torch.Generator(device="cuda").manual_seed(0)
    d = torch.tensor([0.02, 0.03, 0.01], device="cuda")

    def quantized(n: int, amax: float, s: float) -> torch.Tensor:
        x = torch.randn(B, n, H, D, generator=g, device="cuda") * amax / s
        return quantize_fp8(x).transpose(1, 2)  # BHSD view of BSHD memory, as the DiT's heads

    q, k, v = quantized(T, 2, 0.02), quantized(S, 2, 0.03), quantized(S, 1, 0.01)
    kv_len = torch.tensor([1490, 1475], dtype=torch.int32, device="cuda")
    return q, k, v, kv_len, d, torch.tensor(100.0, device="cuda")


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def test_cudnn_fp8_attention_matches_the_reference():
    """Bound 0.05 relative L2 between the two E4M3 outputs: both round o to E4M3 (relative steps of
    up to 2^-3), and cuDNN's other summation order moves some values across a rounding boundary,
    each by one step; the reference itself is 3.6% from exact attention (the CPU test)."""
    args = inputs()
    got = torch.ops.presto.attention_fp8(*args, SCALE)
    want = reference_attention_fp8(*args, SCALE)
    assert got.stride() == want.stride()
    assert rel_l2(got, want) < 0.05


def test_cudnn_fp8_attention_replays_from_a_cuda_graph():
    args = inputs()
    eager = torch.ops.presto.attention_fp8(*args, SCALE)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # the first call on a stream makes its workspace
        torch.ops.presto.attention_fp8(*args, SCALE)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        captured = torch.ops.presto.attention_fp8(*args, SCALE)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured.view(torch.uint8), eager.view(torch.uint8))
