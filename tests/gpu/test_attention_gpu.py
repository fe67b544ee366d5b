"""export/attention.py on CUDA: the unmasked call equals the masked one with the GPU's kernels.

    python -m pytest -q -rs -m gpu tests/gpu/test_attention_gpu.py

At the paper's shape, (1, 16 heads, 1470 audio queries, 1470 + 128 keys, head 72) with 20 valid
text tokens: the masked call runs cuDNN or memory-efficient kernels, the unmasked one at head 80
may run FlashAttention; both accumulate in fp32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from export.attention import attention_without_mask

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unmasked_attention_equals_masked_on_cuda(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, T, S, d, valid = 1, 16, 1470, 128, 72, 20
    q, k, v = (torch.randn(B, H, n, d, generator=g, device="cuda") for n in (T, T + S, T + S))
    mask = torch.ones(B, 1, 1, T + S, dtype=torch.bool, device="cuda")
    mask[..., T + valid :] = False
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # fp32 reference
    got = attention_without_mask(q.to(dtype), k.to(dtype), v.to(dtype), mask).float()
    rel = ((got - want).norm() / want.norm()).item()
    # fp32: different kernels' summation orders, about 1e-6 (TF32 is off for SDPA); bf16: the
    # inputs and output rounded to 8 mantissa bits, about 4e-3. A padded key that leaked in would
    # move the output by O(1e-1).
    assert rel < (1e-5 if dtype == torch.float32 else 1e-2), rel
