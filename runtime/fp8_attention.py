"""FP8 attention with a key-padding length, as one custom op AOTInductor packages can call by name.

    S  = (q8 k8^T) * d_q * d_k * softmax_scale      keys j >= kv_len[b] left out
    P  = softmax(S);  P8 = Q8(P * P_SCALE)           (P is in [0, 1], so P_SCALE = 448 fills E4M3)
    O  = (P8 v8) * d_v / P_SCALE;  o8 = Q8(O * s_o)

q8: (B, H, T, d), k8 and v8: (B, H, S, d), E4M3 (`torch.float8_e4m3fn`), any strides with the last
one 1; kv_len: (B,) int32, the valid keys of each row, 1 or more (the text padding is a suffix);
descales: (3,) fp32, (d_q, d_k, d_v); scale_o: () fp32. Returns o8: (B, H, T, d) E4M3 whose memory
is (B, T, H, d), so the output projection reads it as (B, T, H d) without a copy. Q8 saturates to
+-448 and rounds to nearest even, as `Tensor.to(torch.float8_e4m3fn)` does.

This is the form cuDNN's FP8 SDPA computes on Hopper (its `sdpa_fp8` graph with a padding mask,
`seq_len_kv`): there the op runs one cudnn-frontend graph per shape, cached, on the current stream
(so a torch CUDA graph captures it). Hopper refuses a bf16 output for FP8 attention, hence o8 and
its calibrated scale. Everywhere else `reference_attention_fp8` computes it in fp32 with the same
quantization points. The op is registered on import of this module; runtime.torch_engine imports
it before loading a package whose metadata says it calls the op (`export.build --fp8-attention`).
On CUDA it needs `pip install nvidia-cudnn-frontend==1.32.0` (the project's `cudnn` extra).

Status: the reference is tested on the CPU (tests/runtime/test_fp8_attention.py). On an H200
(dec0952) the cuDNN path matched the reference, eagerly and replayed from a CUDA graph
(tests/gpu/test_fp8_attention_gpu.py: 2 passed), and the budget-0 DiT compiled with it ran at 128
takes (scripts/quant_round.py --precisions fp8-sdpa).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from presto_common.errors import BackendUnavailable, ShapeError

OP = "presto::attention_fp8"
FP8_MAX = 448.0  # the largest finite E4M3 value
P_SCALE = FP8_MAX  # softmax probabilities, at most 1, scaled onto E4M3's range before P8 v8
CUDNN_FRONTEND_PIP = "pip install nvidia-cudnn-frontend==1.32.0"


def quantize_fp8(x: Tensor) -> Tensor:
    """x (fp32) -> E4M3, saturated to +-448 (no inf), rounded to nearest even."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def check_inputs(q: Tensor, k: Tensor, v: Tensor, kv_len: Tensor, descales: Tensor) -> None:
    """ShapeError unless the op's shape, dtype and stride rules hold (see the module docstring)."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ShapeError(
            f"attention_fp8 takes q (B, H, T, d) and k, v (B, H, S, d); got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    B, H, _, d = q.shape
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != d:
        raise ShapeError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch, heads or head width"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype != torch.float8_e4m3fn or t.stride(-1) != 1:
            raise ShapeError(
                f"{name} is {t.dtype} with last stride {t.stride(-1)}; attention_fp8 takes "
                f"float8_e4m3fn with a contiguous last dimension (quantize with quantize_fp8)"
            )
    if kv_len.shape != (B,) or kv_len.dtype != torch.int32:
        raise ShapeError(f"kv_len is {kv_len.dtype} {tuple(kv_len.shape)}; expected int32 ({B},)")
    if descales.shape != (3,):
        raise ShapeError(
            f"descales has shape {tuple(descales.shape)}; expected (3,): d_q, d_k, d_v"
        )


def bshd_empty(B: int, H: int, T: int, d: int, device: torch.device) -> Tensor:
    """An E4M3 (B, H, T, d) tensor whose memory is (B, T, H, d)."""
    return torch.empty(B, T, H, d, dtype=torch.float8_e4m3fn, device=device).transpose(1, 2)


def reference_attention_fp8(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_len: Tensor,
    descales: Tensor,
    scale_o: Tensor,
    softmax_scale: float,
) -> Tensor:
    """The op in fp32 with its quantization points (module docstring); o8 in (B, T, H, d) memory."""
    B, H, T, d = q.shape
    S = k.shape[2]
    dq, dk, dv = descales.float().unbind()
    scores = (q.float() * dq) @ (k.float() * dk).transpose(-1, -2) * softmax_scale  # (B, H, T, S)
    keep = torch.arange(S, device=q.device)[None, :] < kv_len.to(q.device)[:, None]  # (B, S)
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    p8 = quantize_fp8(torch.softmax(scores, dim=-1) * P_SCALE)  # (B, H, T, S)
    o = (p8.float() @ v.float()) * (dv / P_SCALE)  # (B, H, T, d)
    out = bshd_empty(B, H, T, d, q.device)
    out.copy_(quantize_fp8(o * scale_o.float()))
    return out


@torch.library.custom_op(OP, mutates_args=())
def attention_fp8(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_len: Tensor,
    descales: Tensor,
    scale_o: Tensor,
    softmax_scale: float,
) -> Tensor:
    """FP8 attention (module docstring): cuDNN on CUDA, the fp32 reference elsewhere."""
    check_inputs(q, k, v, kv_len, descales)
    if q.is_cuda:
        return _cudnn_attention(q, k, v, kv_len, descales, scale_o, softmax_scale)
    return reference_attention_fp8(q, k, v, kv_len, descales, scale_o, softmax_scale)


@attention_fp8.register_fake
def _(q, k, v, kv_len, descales, scale_o, softmax_scale):
    B, H, T, d = q.shape
    return bshd_empty(B, H, T, d, q.device)


# --- cuDNN (CUDA) ---------------------------------------------------------------------------------

_GRAPHS: dict[tuple, _CudnnSDPA] = {}  # by shapes, strides, softmax scale and device
_LOCK = threading.Lock()  # one enqueue at a time: a graph's handle carries the stream it runs on


def check_device(device: torch.device) -> None:
    """BackendUnavailable, with the pip line, where the op cannot run on `device` (CUDA without
    cudnn-frontend); runtime.torch_engine calls it before loading a package that calls the op."""
    if device.type == "cuda":
        import_cudnn_frontend()


def import_cudnn_frontend():
    """The `cudnn` module of nvidia-cudnn-frontend, or BackendUnavailable with the pip line."""
    try:
        import cudnn
    except ImportError as err:
        raise BackendUnavailable(
            f"FP8 attention on CUDA needs cudnn-frontend ({err}); {CUDNN_FRONTEND_PIP}"
        ) from None
    return cudnn


class _CudnnSDPA:
    """One cudnn-frontend FP8 SDPA graph with a padding mask, for one (shapes, strides, scale), and
    per CUDA stream its own workspace and scratch outputs (two streams may run it at once), kept
    for the life of the process. The graph is built at the first call, which should not be inside
    a CUDA-graph capture: runtime.graphs warms every chain up on a side stream first."""

    def __init__(self, q: Tensor, k: Tensor, softmax_scale: float) -> None:
        cudnn = import_cudnn_frontend()
        dt = cudnn.data_type
        B, H, T, d = q.shape
        self.cudnn, self.handle = cudnn, cudnn.create_handle()
        g = cudnn.pygraph(
            io_data_type=dt.FP8_E4M3, intermediate_data_type=dt.FLOAT, compute_data_type=dt.FLOAT
        )
        io = dict(data_type=dt.FP8_E4M3)
        tq = g.tensor(uid=0, dim=tuple(q.shape), stride=q.stride(), **io)
        tk = g.tensor(uid=1, dim=tuple(k.shape), stride=k.stride(), **io)
        tv = g.tensor(uid=2, dim=tuple(k.shape), stride=k.stride(), **io)
        lens = dict(dim=(B, 1, 1, 1), stride=(1, 1, 1, 1), data_type=dt.INT32)
        one = dict(dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=dt.FLOAT)
        names = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
        scales = {n: g.tensor(uid=u, **one) for n, u in zip(names, range(5, 11))}
        o, _, amax_s, amax_o = g.sdpa_fp8(
            q=tq,
            k=tk,
            v=tv,
            **scales,
            generate_stats=False,
            attn_scale=softmax_scale,
            use_causal_mask=False,
            use_padding_mask=True,
            seq_len_q=g.tensor(uid=14, **lens),
            seq_len_kv=g.tensor(uid=13, **lens),
        )
        o.set_uid(3).set_output(True).set_dim((B, H, T, d)).set_stride((T * H * d, d, H * d, 1))
        o.set_data_type(dt.FP8_E4M3)
        for t, uid in ((amax_s, 11), (amax_o, 12)):
            t.set_uid(uid).set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1))
            t.set_data_type(dt.FLOAT)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        self.graph, self.workspace_bytes = g, g.get_workspace_size()
        self.seq_len_q = torch.full((B, 1, 1, 1), T, dtype=torch.int32, device=q.device)
        self.s_scales = torch.tensor([1 / P_SCALE, P_SCALE], device=q.device)  # descale_s, scale_s
        self.per_stream: dict[int, tuple[Tensor, Tensor]] = {}  # stream -> (workspace, amax_s|o)

    def __call__(self, q, k, v, kv_len, descales, scale_o) -> Tensor:
        B, H, T, d = q.shape
        stream = torch.cuda.current_stream(q.device).cuda_stream
        if stream not in self.per_stream:
            workspace = torch.empty(self.workspace_bytes, dtype=torch.uint8, device=q.device)
            self.per_stream[stream] = (workspace, torch.zeros(2, device=q.device))
        workspace, amax = self.per_stream[stream]
        out = bshd_empty(B, H, T, d, q.device)
        pack = {
            0: q,
            1: k,
            2: v,
            3: out,
            5: descales[0:1],
            6: descales[1:2],
            7: descales[2:3],
            8: self.s_scales[0:1],
            9: self.s_scales[1:2],
            10: scale_o.reshape(1),
            11: amax[0:1],  # the amaxes of P and O: cuDNN writes them, the op does not return them
            12: amax[1:2],
            13: kv_len.reshape(B, 1, 1, 1),
            14: self.seq_len_q,
        }
        self.cudnn.set_stream(handle=self.handle, stream=stream)
        self.graph.execute(pack, workspace, handle=self.handle)
        return out


def _cudnn_attention(q, k, v, kv_len, descales, scale_o, softmax_scale) -> Tensor:
    if k.stride() != v.stride():  # the graph describes k and v with one set of strides
        k, v = k.contiguous(), v.contiguous()
    key = (tuple(q.shape), q.stride(), tuple(k.shape), k.stride(), softmax_scale, q.device)
    with _LOCK:
        op = _GRAPHS.get(key)
        if op is None:
            op = _GRAPHS[key] = _CudnnSDPA(q, k, softmax_scale)
        return op(q, k, v, kv_len.to(torch.int32), descales.float(), scale_o.float())
