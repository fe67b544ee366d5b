"""cuDNN attention at the DiT's shapes: what a custom op around cudnn-frontend's SDPA graphs would buy.

At the DiT's attention shape (H=16 heads, T=1470 queries, S=1598 keys = 1470 audio + 128 text, of
which VALID = 1490 are real: the text is padded at its end) and batch B in --batches, times:

    torch bf16 (cuDNN backend)      head 80 unmasked (the DiT today: the padding folded into a head
                                    channel, export/attention.py); head 72 with a boolean key mask
    cudnn-frontend bf16             head 72 and 80, without a mask and with its padding mask
                                    (seq_len_kv = VALID: the padded keys are skipped, not masked)
    cudnn-frontend FP8 E4M3         head 80 and 128, the same two forms; descales 1, FP8 out
                                    (Hopper refuses a bf16 output for FP8 attention)

and checks that a frontend graph captured in a torch CUDA graph (the handle's stream set to the
capture stream) replays to the eager call's output, bit for bit. Means of 10 calls after one, ms;
`bf16_padded_vs_torch_masked` is the largest difference between the frontend's padded form and
torch's masked SDPA on the same inputs. Prints one JSON document.

    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --platform manylinux_2_28_x86_64 -d wheels nvidia-cudnn-frontend==1.32.0   # here
    python scripts/cudnn_attention_probe.py --frontend DIR   # there: DIR holds the `cudnn` package

The H200 figures are in docs/measurements.md ("Two-H200 round: phase probe, the noise fix").
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, T, S, VALID = 16, 1470, 1598, 1470 + 20
SCALE = 72**-0.5


def timed(fn, reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    torch.cuda.synchronize()
    return round(s.elapsed_time(e) / reps, 4)


def bhsd(b: int, s: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, s, d) with BSHD memory, as the DiT's heads() view leaves it."""
    return torch.randn(b, s, H, d, device="cuda").to(dtype).transpose(1, 2)


def torch_sdpa(b: int) -> dict:
    q, k, v = (
        bhsd(b, T, 80, torch.bfloat16),
        bhsd(b, S, 80, torch.bfloat16),
        bhsd(b, S, 80, torch.bfloat16),
    )
    q72, k72, v72 = (t[..., :72].contiguous() for t in (q, k, v))
    mask = torch.zeros(b, 1, 1, S, dtype=torch.bool, device="cuda")
    mask[..., :VALID] = True
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return {
            "d80_nomask": timed(lambda: F.scaled_dot_product_attention(q, k, v, scale=SCALE)),
            "d72_mask": timed(
                lambda: F.scaled_dot_product_attention(q72, k72, v72, attn_mask=mask, scale=SCALE)
            ),
        }


class FrontendSDPA:
    """One cudnn-frontend SDPA graph for (b, d, io dtype, padded) and its variant pack."""

    def __init__(self, cudnn, handle, b: int, d: int, fp8: bool, padded: bool) -> None:
        dt = cudnn.data_type
        io = dt.FP8_E4M3 if fp8 else dt.BFLOAT16
        self.cudnn, self.handle = cudnn, handle
        g = cudnn.pygraph(
            io_data_type=io, intermediate_data_type=dt.FLOAT, compute_data_type=dt.FLOAT
        )
        sq, skv = (T * H * d, d, H * d, 1), (S * H * d, d, H * d, 1)
        q = g.tensor(uid=0, dim=(b, H, T, d), stride=sq, data_type=io)
        k = g.tensor(uid=1, dim=(b, H, S, d), stride=skv, data_type=io)
        v = g.tensor(uid=2, dim=(b, H, S, d), stride=skv, data_type=io)
        lens = dict(dim=(b, 1, 1, 1), stride=(1, 1, 1, 1), data_type=dt.INT32)
        pad = {}
        if padded:
            pad = dict(
                use_padding_mask=True,
                seq_len_q=g.tensor(uid=14, **lens),
                seq_len_kv=g.tensor(uid=13, **lens),
            )
        one = dict(dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=dt.FLOAT)
        if fp8:
            scales = {
                n: g.tensor(uid=u, **one)
                for n, u in zip(
                    ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o"),
                    (5, 6, 7, 8, 9, 10),
                )
            }
            o, _, amax_s, amax_o = g.sdpa_fp8(
                q=q,
                k=k,
                v=v,
                **scales,
                generate_stats=False,
                attn_scale=SCALE,
                use_causal_mask=False,
                **pad,
            )
            for t, uid in ((amax_s, 11), (amax_o, 12)):
                t.set_uid(uid).set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1))
                t.set_data_type(dt.FLOAT)
        else:
            o, _ = g.sdpa(q=q, k=k, v=v, generate_stats=False, attn_scale=SCALE, **pad)
        o.set_uid(3).set_output(True).set_dim((b, H, T, d)).set_stride(sq).set_data_type(io)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        self.graph = g
        dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
        self.q, self.k, self.v = bhsd(b, T, d, dtype), bhsd(b, S, d, dtype), bhsd(b, S, d, dtype)
        self.o = torch.empty(b, T, H, d, device="cuda", dtype=dtype).transpose(1, 2)
        self.pack = {0: self.q, 1: self.k, 2: self.v, 3: self.o}
        if fp8:
            self.pack |= {u: torch.ones(1, device="cuda") for u in (5, 6, 7, 8, 9, 10)}
            self.pack |= {u: torch.zeros(1, device="cuda") for u in (11, 12)}
        if padded:
            self.pack[14] = torch.full((b, 1, 1, 1), T, dtype=torch.int32, device="cuda")
            self.pack[13] = torch.full((b, 1, 1, 1), VALID, dtype=torch.int32, device="cuda")
        self.workspace = torch.empty(g.get_workspace_size(), dtype=torch.uint8, device="cuda")

    def __call__(self) -> None:
        stream = torch.cuda.current_stream().cuda_stream
        self.cudnn.set_stream(handle=self.handle, stream=stream)
        self.graph.execute(self.pack, self.workspace, handle=self.handle)

    def captured(self) -> dict:
        """Eager output, then the same call captured in a CUDA graph and replayed: equal?"""
        self()
        torch.cuda.synchronize()
        eager = self.o.clone()
        self.o.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self()
        graph.replay()
        torch.cuda.synchronize()
        return {
            "replay_equals_eager": bool(torch.equal(self.o, eager)),
            "replay_ms": timed(graph.replay),
        }


def frontend(cudnn, b: int) -> dict:
    handle = cudnn.create_handle()
    out = {}
    forms = [(False, 72), (False, 80), (True, 80), (True, 128)]
    for fp8, d in forms:
        for padded in (False, True):
            key = f"{'fp8' if fp8 else 'bf16'}_d{d}_{'padded' if padded else 'nomask'}"
            try:
                op = FrontendSDPA(cudnn, handle, b, d, fp8, padded)
                out[key] = timed(op)
                if padded and (d == 72 or d == 128):
                    out[key + "_graph"] = op.captured()
                if padded and not fp8 and d == 72:  # same inputs through torch's masked SDPA
                    mask = torch.zeros(b, 1, 1, S, dtype=torch.bool, device="cuda")
                    mask[..., :VALID] = True
                    ref = F.scaled_dot_product_attention(
                        op.q.float(), op.k.float(), op.v.float(), attn_mask=mask, scale=SCALE
                    )
                    op()
                    torch.cuda.synchronize()
                    out["bf16_padded_vs_torch_masked_max_abs"] = (
                        (op.o.float() - ref).abs().max().item()
                    )
            except Exception as err:  # noqa: BLE001  reported per form
                out[key] = f"{type(err).__name__}: {str(err)[:300]}"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--frontend", help="folder holding the `cudnn` package (nvidia-cudnn-frontend)")
    p.add_argument("--batches", default="1,128", help="comma-separated batch sizes B")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA GPU; run this on the GPU machine", file=sys.stderr)
        return 1
    doc = {"torch": torch.__version__, "cudnn_backend": torch.backends.cudnn.version()}
    batches = [int(b) for b in args.batches.split(",")]
    for b in batches:
        doc[f"torch_b{b}"] = torch_sdpa(b)
    try:
        if args.frontend:
            sys.path.insert(0, args.frontend)
        import cudnn

        doc["cudnn_frontend"] = cudnn.__version__
        for b in batches:
            doc[f"frontend_b{b}"] = frontend(cudnn, b)
    except Exception:  # noqa: BLE001  reported
        doc["frontend_error"] = traceback.format_exc()[-1500:]
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
