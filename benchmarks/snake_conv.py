"""A Snake activation fused into the convolution that consumes it: a Triton prototype, timed
against what the packages run today (`python -m benchmarks.microbench --parts snake-conv`).

In the VAE decoder and the mono-to-stereo model every convolution reads Snake(x) = x + sin^2(a x)
/ (a + 1e-9), per channel a, which Inductor computes in a pointwise pass of its own between
cuDNN's convolutions: 3.6 of the decoder's 9.5 ms of kernels at batch 1 on the H200, 5.1 of the
stereo model's 13.5 ms, and 590 of their 1552 ms at batch 64 (4cfd3d1 profiles). Those passes
already stream at the copy bandwidth, so only a convolution that applies Snake to the tile it
loads removes them. `snake_conv1d` is that convolution, for stride 1 with 'same' zero padding
(every residual unit's two convolutions), channels-last: an implicit GEMM over (tap, input
channel) chunks whose A tiles get Snake in fp32, are rounded to bf16 where the pass wrote bf16,
and go through tl.dot with fp32 accumulation; bias and an optional residual are added in the
epilogue. One residual unit, x + conv_1(Snake(conv_k,d(Snake(x)))), becomes two launches with no
pass between them.

It is a measurement, not yet a build rewrite: `snake_unit_reference` is the unit as the packages
compute it, and the `snake-conv` part of benchmarks.microbench times both at the decoder's last
block's shapes. Correctness is tested with Triton's interpreter on the CPU where Triton is
installed (tests/benchmarks/test_snake_conv.py) and on CUDA (tests/gpu/test_snake_conv_gpu.py).

Measured on the H200 at 1295cfc (benchmarks/baselines/h200-snake-conv-b1-1295cfc.json): correct
(2.9e-3 from fp32, Inductor's unit 3.2e-3) but 3.2x slower than Inductor's unit, 4.38 against
1.37 ms at batch 1 (47 against 151 TFLOP/s), 0.23x-0.28x at batch 8. Each A tile reloads its
input per tap and recomputes Snake there, and K = 96 per tap keeps tl.dot far from the tensor
cores' rate; Snake in the epilogue of the convolution that produces x is the form left to try.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SNAKE_EPS = 1e-9  # presto_ref.layers.Snake1d's guard against alpha = 0

try:  # Triton ships with CUDA builds of torch; the CPU build used in CI has none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None


def snake(x: Tensor, alpha: Tensor) -> Tensor:
    """Snake1d on channels-last x (B, T, C) with alpha (C,), in fp32, rounded to x's dtype."""
    xf, a = x.float(), alpha.float()
    return (xf + torch.sin(a * xf).pow(2) / (a + SNAKE_EPS)).to(x.dtype)


def conv_same(x: Tensor, weight: Tensor, bias: Tensor, dilation: int) -> Tensor:
    """Stride-1 'same' conv of channels-last x (B, T, C_in) with weight (K, C_in, C_out), as the
    CUDA packages run it: a height-1 conv2d on channels-last memory (export/conv_layout.py)."""
    w = weight.permute(2, 1, 0).unsqueeze(2)  # (C_out, C_in, 1, K)
    pad = dilation * (weight.shape[0] - 1) // 2
    x4 = x.transpose(1, 2).unsqueeze(2)  # (B, C_in, 1, T) over x's (B, T, C) memory: NHWC
    y = F.conv2d(x4, w, bias, padding=(0, pad), dilation=(1, dilation))
    return y.squeeze(2).transpose(1, 2)


def snake_unit_reference(x, alpha1, w1, b1, dilation, alpha2, w2, b2) -> Tensor:
    """x + conv_1(Snake(conv_K,d(Snake(x)))) on channels-last (B, T, C): the residual unit."""
    h = conv_same(snake(x, alpha1), w1, b1, dilation)
    return x + conv_same(snake(h, alpha2), w2, b2, 1)


def snake_unit_fp32(x, alpha1, w1, b1, dilation, alpha2, w2, b2) -> Tensor:
    """snake_unit_reference with every input in fp32 and TF32 off for cuDNN: the exact reference
    that the measurements and the gpu test hold both bf16 forms against."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            a1, w1, b1, a2, w2, b2 = (t.float() for t in (alpha1, w1, b1, alpha2, w2, b2))
            return snake_unit_reference(x.float(), a1, w1, b1, dilation, a2, w2, b2)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


if triton is not None:

    @triton.jit
    def _snake_conv_kernel(
        x_ptr, w_ptr, alpha_ptr, bias_ptr, res_ptr, y_ptr,
        T, C_IN, C_OUT, DIL, PAD,
        K: tl.constexpr, HAS_RES: tl.constexpr, DOT_FP32: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
    ):  # fmt: skip
        pid_t, pid_co, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
        acc = tl.zeros((BLOCK_T, BLOCK_CO), dtype=tl.float32)
        x_base = x_ptr + b * T * C_IN
        for k in tl.static_range(K):
            src = t + k * DIL - PAD
            inside = (src >= 0) & (src < T)
            for ci0 in range(0, C_IN, BLOCK_CI):
                ci = ci0 + tl.arange(0, BLOCK_CI)
                xm = inside[:, None] & (ci[None, :] < C_IN)
                xv = tl.load(x_base + src[:, None] * C_IN + ci[None, :], mask=xm, other=0.0)
                a = tl.load(alpha_ptr + ci, mask=ci < C_IN, other=1.0)[None, :]
                xf = xv.to(tl.float32)
                s = tl.sin(a * xf)
                xs = (xf + s * s / (a + 1e-9)).to(xv.dtype)  # Snake(0) = 0: padding stays zero
                wm = (ci[:, None] < C_IN) & (co[None, :] < C_OUT)
                wv = tl.load(
                    w_ptr + (k * C_IN + ci[:, None]) * C_OUT + co[None, :], mask=wm, other=0.0
                )
                if DOT_FP32:  # the interpreter (CPU) mishandles bf16 dots; the values are the same
                    acc += tl.dot(xs.to(tl.float32), wv.to(tl.float32))
                else:
                    acc += tl.dot(xs, wv)
        acc += tl.load(bias_ptr + co, mask=co < C_OUT, other=0.0).to(tl.float32)[None, :]
        offs = b * T * C_OUT + t[:, None] * C_OUT + co[None, :]
        om = (t[:, None] < T) & (co[None, :] < C_OUT)
        if HAS_RES:
            acc += tl.load(res_ptr + offs, mask=om, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=om)


def snake_conv1d(
    x: Tensor,
    alpha: Tensor,
    weight: Tensor,
    bias: Tensor,
    dilation: int = 1,
    residual: Tensor | None = None,
    block_t: int = 128,
    block_ci: int = 32,
    num_warps: int = 4,
    num_stages: int = 3,
) -> Tensor:
    """conv_same(Snake(x), weight, bias, dilation) (+ residual), one Triton launch.

    x: (B, T, C_in) contiguous, weight: (K, C_in, C_out) contiguous (K odd), alpha: (C_in,) fp32,
    bias: (C_out,), residual: None or (B, T, C_out). Returns (B, T, C_out) in x's dtype.
    """
    if triton is None:
        raise RuntimeError("snake_conv1d needs Triton (it ships with CUDA builds of torch)")
    B, T, c_in = x.shape
    K, w_in, c_out = weight.shape
    if w_in != c_in or K % 2 == 0 or not x.is_contiguous() or not weight.is_contiguous():
        raise ValueError(f"x {tuple(x.shape)} and weight {tuple(weight.shape)}: expected "
                         "contiguous (B, T, C_in) and (K odd, C_in, C_out)")  # fmt: skip
    y = torch.empty(B, T, c_out, dtype=x.dtype, device=x.device)
    block_co = max(16, triton.next_power_of_2(min(c_out, 128)))
    grid = (triton.cdiv(T, block_t), triton.cdiv(c_out, block_co), B)
    _snake_conv_kernel[grid](
        x, weight, alpha.float().contiguous(), bias, residual if residual is not None else y, y,
        T, c_in, c_out, dilation, dilation * (K - 1) // 2,
        K=K, HAS_RES=residual is not None, DOT_FP32=x.device.type != "cuda",
        BLOCK_T=block_t, BLOCK_CO=block_co, BLOCK_CI=block_ci,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return y


def snake_unit_fused(x, alpha1, w1, b1, dilation, alpha2, w2, b2, **blocks) -> Tensor:
    """snake_unit_reference in two launches of snake_conv1d (the residual in the second's
    epilogue)."""
    h = snake_conv1d(x, alpha1, w1, b1, dilation, **blocks)
    return snake_conv1d(h, alpha2, w2, b2, 1, residual=x, **blocks)


def unit_weights(channels: int, kernel: int, dtype: torch.dtype, device, seed: int = 0):
    """Seeded weights of one residual unit: alpha1, w1 (K, C, C), b1, alpha2, w2 (1, C, C), b2;
    alphas around 1 (init_snake_'s spread) in fp32, convs scaled for unit variance."""
    g = torch.Generator().manual_seed(seed)

    def w(k: int) -> Tensor:
        std = (k * channels) ** -0.5
        return (torch.randn(k, channels, channels, generator=g) * std).to(dtype).to(device)

    def alpha() -> Tensor:
        return (1 + 0.1 * torch.randn(channels, generator=g)).to(device)

    def bias() -> Tensor:
        return (0.01 * torch.randn(channels, generator=g)).to(dtype).to(device)

    return alpha(), w(kernel), bias(), alpha(), w(1), bias()
