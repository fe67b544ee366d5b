"""runtime/host_copy.py on the CPU: outputs already on the host pass through as float32 arrays,
with no pinned buffer (the CUDA path is tests/gpu/test_host_copy_gpu.py's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from presto_common.errors import InputError
from runtime.host_copy import HostStaging, PinnedUpload


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


def test_pinned_upload_refuses_a_cpu_device() -> None:
    """PinnedUpload stages uploads to a GPU; asked for the CPU it says so before pinning anything."""
    with pytest.raises(
        InputError, match=r"PinnedUpload\(device=cpu\): it uploads to a CUDA device"
    ):
        PinnedUpload((2, 3), torch.device("cpu"))
