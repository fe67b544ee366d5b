"""runtime/fp8_attention.py on the CPU: the fp32 reference of `presto::attention_fp8` against
masked attention on the dequantized inputs, its key padding, layout and errors, and that
torch.export keeps the op as one node (what an AOTInductor package would call).
`python -m pytest tests/runtime/test_fp8_attention.py -q`"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from presto_common.errors import ShapeError
from runtime.fp8_attention import quantize_fp8, reference_attention_fp8

B, H, T, S, D = 2, 4, 64, 80, 80
SOFTMAX_SCALE = 72**-0.5


def inputs(seed: int = 0, lengths: tuple[int, ...] = (80, 70)):
    """E4M3 q, k, v in BHSD views of BSHD memory (as the DiT's heads), their scales, kv_len."""
    g = torch.Generator().manual_seed(seed)
    d = torch.tensor([0.02, 0.03, 0.01])  # d_q, d_k, d_v

    def quantized(n: int, amax: float, s: float) -> torch.Tensor:
        x = torch.randn(B, n, H, D, generator=g) * amax / s
        return quantize_fp8(x).transpose(1, 2)

    q, k, v = quantized(T, 2, 0.02), quantized(S, 2, 0.03), quantized(S, 1, 0.01)
    return q, k, v, torch.tensor(lengths, dtype=torch.int32), d, torch.tensor(100.0)


def masked_attention(q, k, v, kv_len, d) -> torch.Tensor:
    keep = (torch.arange(S)[None, :] < kv_len[:, None])[:, None, None, :]
    qf, kf, vf = (t.float() * s for t, s in zip((q, k, v), d))
    return F.scaled_dot_product_attention(qf, kf, vf, attn_mask=keep, scale=SOFTMAX_SCALE)


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_is_masked_attention_within_fp8_rounding(seed: int) -> None:
    """Bound 0.05 relative L2: rounding o to E4M3 (3 mantissa bits, relative steps up to 2^-3) alone
    has a relative RMS of about 2^-3 / sqrt(12) = 3.6%; P's rounding averages out over the keys.
    Measured 3.6% on these inputs; a wrong scale, mask or layout is off by far more."""
    q, k, v, kv_len, d, s_o = inputs(seed)
    got = reference_attention_fp8(q, k, v, kv_len, d, s_o, SOFTMAX_SCALE).float() / s_o
    ref = masked_attention(q, k, v, kv_len, d)
    assert ((got - ref).norm() / ref.norm()).item() < 0.05
    assert F.cosine_similarity(got.flatten(), ref.flatten(), dim=0).item() > 0.998


def test_padded_keys_are_left_out() -> None:
    q, k, v, kv_len, d, s_o = inputs(lengths=(80, 50))
    first = torch.ops.presto.attention_fp8(q, k, v, kv_len, d, s_o, SOFTMAX_SCALE)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 50:] = quantize_fp8(torch.full_like(k2[1, :, 50:], 400.0, dtype=torch.float32))
    v2[1, :, 50:] = quantize_fp8(torch.full_like(v2[1, :, 50:], -400.0, dtype=torch.float32))
    again = torch.ops.presto.attention_fp8(q, k2, v2, kv_len, d, s_o, SOFTMAX_SCALE)
    assert torch.equal(first.view(torch.uint8), again.view(torch.uint8))
    k2[0, :, 50:] = k2[1, :, 50:]  # row 0 reads all 80 keys: it must see the change
    changed = torch.ops.presto.attention_fp8(q, k2, v2, kv_len, d, s_o, SOFTMAX_SCALE)
    assert not torch.equal(first[0].view(torch.uint8), changed[0].view(torch.uint8))


def test_output_memory_is_bshd() -> None:
    """So the output projection reads o as (B, T, H d) without a copy."""
    o = torch.ops.presto.attention_fp8(*inputs(), SOFTMAX_SCALE)
    assert o.shape == (B, H, T, D) and o.dtype == torch.float8_e4m3fn
    assert o.transpose(1, 2).is_contiguous()


def test_the_op_passes_torch_library_checks() -> None:
    """The fake kernel (what torch.export and Inductor trace) against the real one: shapes, dtype,
    strides. (opcheck's schema test multiplies the inputs, which E4M3 tensors do not support.)"""
    torch.library.opcheck(
        torch.ops.presto.attention_fp8.default,
        (*inputs(), SOFTMAX_SCALE),
        test_utils=("test_faketensor",),
    )


def test_export_keeps_the_op_as_one_node() -> None:
    class Attend(torch.nn.Module):
        def forward(self, q, k, v, kv_len, d, s_o):
            return torch.ops.presto.attention_fp8(q, k, v, kv_len, d, s_o, SOFTMAX_SCALE)

    graph = torch.export.export(Attend(), inputs()).graph
    calls = [n for n in graph.nodes if n.target is torch.ops.presto.attention_fp8.default]
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda a: (a[0].float(), *a[1:]), "float8_e4m3fn"),
        (lambda a: (*a[:3], a[3].long(), *a[4:]), "kv_len"),
        (lambda a: (*a[:4], a[4][:2], a[5]), "descales"),
        (lambda a: (a[0], a[1][:, :, :, :16], *a[2:]), "q (B, H, T, d)"),
    ],
)
def test_bad_inputs_are_shape_errors(change, needle: str) -> None:
    with pytest.raises(ShapeError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        torch.ops.presto.attention_fp8(*change(inputs()), SOFTMAX_SCALE)
