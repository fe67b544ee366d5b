"""export/attention.py: the unmasked attention equals SDPA with the key padding mask (CPU)."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

import export.attention
from export.attention import MASKED_LOGIT, attention_without_mask, padded_head_width


def _case(valid_text: list[int], d: int = 72, heads: int = 4, T: int = 37, S: int = 16, seed=0):
    """q (B, H, T, d), k and v over T audio + S text keys, the mask with valid_text[b] text keys."""
    g = torch.Generator().manual_seed(seed)
    B = len(valid_text)
    q, k, v = (torch.randn(B, heads, n, d, generator=g) for n in (T, T + S, T + S))
    mask = torch.ones(B, 1, 1, T + S, dtype=torch.bool)
    for b, n in enumerate(valid_text):
        mask[b, ..., T + n :] = False
    return q, k, v, mask


@pytest.mark.parametrize("d", [72, 64, 8, 128])
def test_fp32_equals_the_masked_call(d):
    # One padded text key, all padded, none padded; head widths with 1 to 15 padding channels.
    # The same dot products plus exact zeros, softmax weights of exactly 0 on padded keys: the
    # difference is float reassociation inside the kernel, measured 0 on this CPU; 1e-6 of the
    # values' O(1) scale leaves room for another kernel order and still catches a leak of a padded
    # key (weight e^0 against the others: an O(0.1) change) or a wrong scale.
    q, k, v, mask = _case([15, 0, 16], d=d)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = attention_without_mask(q, k, v, mask)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precisions_match_the_masked_call_in_the_same_dtype(dtype):
    # The bias channel holds MASKED_LOGIT * sqrt(d) = -42426 at d = 72: representable in fp16 and
    # bf16, so the padded keys still get weight 0. Against the masked call in the same dtype the
    # error is the dtype's rounding of the output (bf16: 2**-8 relative), hence atol 2e-2 on O(1)
    # values; a padded key leaking in would move some outputs by O(0.1) or more.
    q, k, v, mask = _case([3, 16])
    want = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=mask)
    got = attention_without_mask(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=2e-2)
    assert torch.isfinite(got).all()


def test_padded_keys_get_no_weight():
    # Values of the padded keys set to 1e6: any weight on them would show.
    q, k, v, mask = _case([4])
    v_loud = v.clone()
    v_loud[..., ~mask[0, 0, 0], :] = 1e6
    torch.testing.assert_close(
        attention_without_mask(q, k, v_loud, mask), attention_without_mask(q, k, v, mask)
    )
    assert torch.exp(torch.tensor(MASKED_LOGIT)) == 0


def test_padded_head_width_and_doctest():
    assert [padded_head_width(d) for d in (72, 79, 80, 15, 1)] == [80, 80, 96, 16, 16]
    assert doctest.testmod(export.attention).failed == 0
