"""runtime/host_copy.py on CUDA: the pinned copy equals `.cpu()`, one buffer per shape, reused.

python -m pytest -q -rs -m gpu tests/gpu/test_host_copy_gpu.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.host_copy import HostStaging, PinnedUpload

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


def test_pinned_upload_equals_the_rule_and_never_overwrites_a_queued_copy() -> None:
    """PinnedUpload: each upload carries the values its fill wrote, even when the next fill comes
    while the device is still busy (a long kernel queued ahead of the copy): the refill waits."""
    from presto_common.noise import draw_all, fill_draws

    upload = PinnedUpload((4, 2, 64, 1470), torch.device("cuda"))
    outs = []
    for seeds in ([0, 1], [2, 3], [4, 5]):
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time queued ahead of the copy
        outs.append((seeds, upload.upload(lambda buf, s=seeds: fill_draws(s, buf))))
    for seeds, out in outs:
        expected = torch.stack(draw_all(seeds, (64, 1470), 4))
        assert torch.equal(out.cpu(), expected)


def test_copy_to_pinned_equals_cpu_into_slices_and_refuses_pageable() -> None:
    """copy_to_pinned writes a bf16 or float32 CUDA tensor into a slice of a pinned float32 array,
    complete on return and equal to `.cpu().float()`; a pageable destination is refused."""
    from presto_common.errors import InputError
    from runtime.host_copy import copy_to_pinned

    host = torch.empty(3, 2, 44100, pin_memory=True)
    a = torch.randn(2, 2, 44100, device="cuda").to(torch.bfloat16)
    b = torch.randn(1, 2, 44100, device="cuda")
    copy_to_pinned(a, host[:2])
    copy_to_pinned(b, host[2:])
    assert torch.equal(host[:2], a.cpu().float()) and torch.equal(host[2:], b.cpu())
    with pytest.raises(InputError, match="pinned: False"):
        copy_to_pinned(b, torch.empty(1, 2, 44100))
