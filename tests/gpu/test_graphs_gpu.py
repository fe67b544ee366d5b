"""CapturedChain on two GPUs of one process: each capture records its own GPU's work.

    python -m pytest -q -rs -m gpu tests/gpu/test_graphs_gpu.py      # needs two CUDA GPUs

torch.cuda.graph's default capture stream is made once per process, on whichever GPU is current at
the first capture. Before CapturedChain passed a stream of its own, a capture on cuda:1 after one
on cuda:0 went wrong: AOTInductor packages failed in it with "invalid resource handle" and torch
warned "The CUDA Graph is empty" (tests/gpu/test_runtime_gpu.py in the two-H200 round of c1e01eb),
and this test, on plain torch ops, failed with "operation not permitted when stream is capturing"
(c1e01eb's runtime/graphs.py on the same machine); with the fix it passed.
"""

from __future__ import annotations

import pytest
import torch

from runtime.graphs import CapturedChain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2,
        reason="needs two CUDA GPUs (a capture on cuda:1 after one on cuda:0, in one process)",
    ),
]


def chain(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A few kernels whose outputs depend on every input value."""
    h = torch.tanh(x @ y) + x.sum(dim=1, keepdim=True)
    return (h * 2.0, h.mean(dim=0))


def inputs(device: str, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 64, generator=g).to(device) for _ in range(2)]


def test_captures_on_two_gpus_each_replay_their_inputs() -> None:
    assert torch.cuda.current_device() == 0
    graphs = {d: CapturedChain(chain, inputs(d, 0)) for d in ("cuda:0", "cuda:1")}
    assert torch.cuda.current_device() == 0, "the capture left another GPU current"
    for device, graph in graphs.items():
        for seed in (1, 2):
            x = inputs(device, seed)
            for got, want in zip(graph.replay(x), chain(*x), strict=True):
                assert got.device == torch.device(device)
                torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"{device}, seed {seed}")
