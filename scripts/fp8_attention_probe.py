"""What would FP8 attention save the DiT at 128 takes? cuDNN's FP8 SDPA (cudnn-frontend, per-tensor
descales of 1, FP8 E4M3 in and out: Hopper refuses a bf16 output) against bf16 SDPA through torch's
cuDNN backend, at the DiT's shape (B=128, H=16, 1470 queries, 1598 keys), head 80 (72 zero-padded)
and 128, with and without a key padding mask (bf16: a boolean mask; FP8: cuDNN's seq_len_kv with the
first 1470 + 20 keys valid, which skips the padded keys). Also lists what torch offers itself.
Times are means of 10 calls after one, in ms; prints one JSON document.

    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 -d wheels nvidia-cudnn-frontend==1.32.0   # here
    python scripts/fp8_attention_probe.py DIR   # there: DIR holds the unpacked `cudnn` package

The H200 figures are in docs/measurements.md ("Two-H200 round: phase probe, the noise fix").
"""

import importlib.util
import json
import sys
import traceback

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

out = {"torch": torch.__version__, "cudnn_backend": torch.backends.cudnn.version()}
out["aten_ops"] = sorted(
    n
    for n in dir(torch.ops.aten)
    if "attention" in n and ("quant" in n or "cudnn" in n or "fp8" in n)
)
out["torch_quantized_sdpa_api"] = (
    importlib.util.find_spec("torch.nn.attention.experimental") is not None
)
B, H, T, S, VALID = 128, 16, 1470, 1598, 1470 + 20


def timed(fn, reps=10):
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    torch.cuda.synchronize()
    return round(s.elapsed_time(e) / reps, 3)


def bf16(d):
    q = torch.randn(B, T, H, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k = torch.randn(B, S, H, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    v = torch.randn_like(k)
    mask = torch.zeros(B, 1, 1, S, dtype=torch.bool, device="cuda")
    mask[..., :VALID] = True
    r = {}
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        r["cudnn_nomask_ms"] = timed(
            lambda: F.scaled_dot_product_attention(q, k, v, scale=72**-0.5)
        )
        try:
            r["cudnn_mask_ms"] = timed(
                lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=72**-0.5)
            )
        except Exception as err:  # noqa: BLE001  reported
            r["cudnn_mask"] = f"{type(err).__name__}: {str(err)[:200]}"
    r["default_mask_ms"] = timed(
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=72**-0.5)
    )
    return r


def fp8(cudnn, handle, d, masked):
    dt = cudnn.data_type
    g = cudnn.pygraph(
        io_data_type=dt.FP8_E4M3, intermediate_data_type=dt.FLOAT, compute_data_type=dt.FLOAT
    )
    sq, skv = (T * H * d, d, H * d, 1), (S * H * d, d, H * d, 1)
    q = g.tensor(uid=0, dim=(B, H, T, d), stride=sq, data_type=dt.FP8_E4M3)
    k = g.tensor(uid=1, dim=(B, H, S, d), stride=skv, data_type=dt.FP8_E4M3)
    v = g.tensor(uid=2, dim=(B, H, S, d), stride=skv, data_type=dt.FP8_E4M3)
    one = dict(dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=dt.FLOAT)
    sc = {
        name: g.tensor(uid=uid, **one)
        for name, uid in (
            ("descale_q", 5),
            ("descale_k", 6),
            ("descale_v", 7),
            ("descale_s", 8),
            ("scale_s", 9),
            ("scale_o", 10),
        )
    }
    extra = {}
    if masked:
        lens = dict(dim=(B, 1, 1, 1), stride=(1, 1, 1, 1), data_type=dt.INT32)
        extra = dict(
            use_padding_mask=True,
            seq_len_q=g.tensor(uid=14, **lens),
            seq_len_kv=g.tensor(uid=13, **lens),
        )
    o, _stats, amax_s, amax_o = g.sdpa_fp8(
        q=q,
        k=k,
        v=v,
        **sc,
        generate_stats=False,
        attn_scale=72**-0.5,
        use_causal_mask=False,
        **extra,
    )
    o.set_uid(3).set_output(True).set_dim((B, H, T, d)).set_stride(sq).set_data_type(dt.FP8_E4M3)
    amax_s.set_uid(11).set_output(True).set_dim((1, 1, 1, 1)).set_stride(
        (1, 1, 1, 1)
    ).set_data_type(dt.FLOAT)
    amax_o.set_uid(12).set_output(True).set_dim((1, 1, 1, 1)).set_stride(
        (1, 1, 1, 1)
    ).set_data_type(dt.FLOAT)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    f8 = torch.float8_e4m3fn
    pack = {
        0: torch.randn(B, T, H, d, device="cuda").to(f8),
        1: torch.randn(B, S, H, d, device="cuda").to(f8),
        2: torch.randn(B, S, H, d, device="cuda").to(f8),
        3: torch.empty(B, T, H, d, device="cuda", dtype=f8),
        11: torch.zeros(1, device="cuda"),
        12: torch.zeros(1, device="cuda"),
    }
    for uid in (5, 6, 7, 8, 9, 10):
        pack[uid] = torch.ones(1, device="cuda")
    if masked:
        pack[14] = torch.full((B, 1, 1, 1), T, dtype=torch.int32, device="cuda")
        pack[13] = torch.full((B, 1, 1, 1), VALID, dtype=torch.int32, device="cuda")
    ws = torch.empty(g.get_workspace_size(), dtype=torch.uint8, device="cuda")
    return timed(lambda: g.execute(pack, ws, handle=handle))


for d in (80, 128):
    try:
        out[f"bf16_d{d}"] = bf16(d)
    except Exception as err:  # noqa: BLE001  reported
        out[f"bf16_d{d}"] = f"{type(err).__name__}: {str(err)[:300]}"
try:
    if len(sys.argv) > 1:
        sys.path.insert(0, sys.argv[1])
    import cudnn

    out["cudnn_frontend"] = cudnn.__version__
    out["cudnn_backend_seen_by_frontend"] = cudnn.backend_version()
    stream = torch.cuda.current_stream()
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=stream.cuda_stream)
    for d in (80, 128):
        for masked in (False, True):
            key = f"fp8out_d{d}_{'mask' if masked else 'nomask'}_ms"
            try:
                out[key] = fp8(cudnn, handle, d, masked)
            except Exception as err:  # noqa: BLE001  reported
                out[key] = f"{type(err).__name__}: {str(err)[:400]}"
except Exception:  # noqa: BLE001  reported
    out["cudnn_frontend_error"] = traceback.format_exc()[-1500:]
print(json.dumps(out, indent=1))
