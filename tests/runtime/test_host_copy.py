"""runtime/host_copy.py on the CPU: outputs already on the host pass through as float32 arrays,
with no pinned buffer (the CUDA path is tests/gpu/test_host_copy_gpu.py's)."""

from __future__ import annotations

import numpy as np
import torch

from runtime.host_copy import HostStaging


def test_a_float32_cpu_tensor_is_returned_without_a_copy() -> None:
    staging = HostStaging()
    t = torch.randn(2, 2, 5)
    out = staging.to_host(t)
    assert out.dtype == np.float32 and out.shape == (2, 2, 5)
    assert np.shares_memory(out, t.numpy())
    assert staging.pinned_bytes == 0 and staging.release() == 0


def test_other_cpu_dtypes_are_converted_to_float32() -> None:
    t = torch.randn(3, 7).to(torch.bfloat16)
    out = HostStaging().to_host(t)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, t.float().numpy())  # bf16 -> fp32 is exact
