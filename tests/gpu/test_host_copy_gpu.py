"""runtime/host_copy.py on CUDA: the pinned copy equals `.cpu()`, one buffer per shape, reused.

python -m pytest -q -rs -m gpu tests/gpu/test_host_copy_gpu.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.host_copy import HostStaging

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_the_pinned_copy_equals_cpu_and_reuses_its_buffer(dtype: torch.dtype) -> None:
    staging = HostStaging()
    a = torch.randn(2, 2, 44100, device="cuda").to(dtype)
    b = torch.randn(2, 2, 44100, device="cuda").to(dtype)
    out_a = staging.to_host(a)
    np.testing.assert_array_equal(out_a, a.cpu().float().numpy())  # bit for bit: a plain copy
    first = out_a.copy()
    out_b = staging.to_host(b)
    np.testing.assert_array_equal(out_b, b.cpu().float().numpy())
    assert np.shares_memory(out_a, out_b), "the same shape must reuse its pinned buffer"
    assert not np.array_equal(out_a, first), "the second copy overwrites the first view"
    assert staging.pinned_bytes == 2 * 2 * 44100 * 4
    staging.to_host(torch.zeros(1, 2, 44100, device="cuda"))
    assert staging.pinned_bytes == 3 * 2 * 44100 * 4
    assert staging.release() == 2 and staging.pinned_bytes == 0


def test_the_copy_is_complete_when_to_host_returns() -> None:
    # to_host waits for the tensor's stream: the values written just before it are all there.
    staging = HostStaging()
    x = torch.empty(1 << 22, device="cuda")
    for value in (1.0, 2.0, 3.0):
        x.fill_(value)
        assert (staging.to_host(x) == value).all()
