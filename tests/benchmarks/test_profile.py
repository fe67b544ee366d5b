"""benchmarks.profile: kernel classes and the per-stage summary (names from real H100 profiles), and
the per-stage calls on the CPU: `python -m pytest tests/benchmarks/test_profile.py -q`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.profile import classify, stage_calls, summarize_kernels


@pytest.mark.parametrize(
    ("name", "label"),
    [
        (
            "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128",
            "attention",
        ),
        ("nvjet_sm90_tst_256x136_64x4_2x1_v_bz_coopA_TNT", "gemm"),
        (
            "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64",
            "convolution",
        ),
        ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>", "copy/layout"),
        ("triton_poi_fused__unsafe_view_add_clone_convolution_div_mul_pow_sin_slice_18", "fused"),
        ("triton_red_fused__to_copy__unsafe_view_add_mean_mm_mul_pow_rsqrt_split_21", "fused"),
        ("triton_tem_fused_mm_0", "gemm"),
        ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>", "reduction"),
        ("void at::native::vectorized_elementwise_kernel<8, silu>", "elementwise"),
        ("some_new_kernel", "other"),
    ],
)
def test_classify(name: str, label: str) -> None:
    assert classify(name) == label


def test_summary_adds_up() -> None:
    events = [("nvjet_a", 1.0), ("nvjet_a", 1.0), ("triton_poi_fused_x", 0.5), ("fmha_fwd", 1.5)]
    s = summarize_kernels(events, top=2)
    assert s["kernel_ms"] == pytest.approx(4.0)
    assert s["launches"] == 4
    assert s["classes"]["gemm"] == {"ms": 2.0, "launches": 2, "share": 0.5}
    assert list(s["classes"]) == ["gemm", "attention", "fused"]  # by time, descending
    assert [t["kernel"] for t in s["top"]] == ["nvjet_a", "fmha_fwd"]


def test_stage_calls_run_through_the_bucket_api(build: Path) -> None:
    """Each stage's callable runs on the CPU (the profiler around it needs CUDA)."""
    from runtime import Pipeline

    pipe = Pipeline(build, "onnxruntime", "cpu", cuda_graph=False)
    calls = stage_calls(pipe, batch=2)
    budgets = sorted(set(pipe.manifest.sampler.step_budgets))
    dits = [f"dit_b{b}" for b in budgets]
    assert list(calls) == ["text_encoder", *dits, "vae_decoder", "stereo", "e2e_stereo"]
    shapes = {name: fn() for name, fn in calls.items()}
    assert shapes["e2e_stereo"].samples.shape == (2, 2, 11 * 960)
    assert tuple(shapes["stereo"].shape) == (2, 2, 11 * 960)
    assert tuple(shapes[dits[0]].shape) == (2, pipe.manifest.latent_channels, 11)


def test_idle_intervals_are_the_window_minus_the_busy_ones() -> None:
    from benchmarks.profile import idle_intervals

    busy = [(30, 40), (10, 20), (15, 25), (90, 120)]  # unsorted, overlapping, one past the end
    assert idle_intervals(busy, (0, 100)) == [(0, 10), (25, 30), (40, 90)]
    assert idle_intervals([], (5, 9)) == [(5, 9)]
    assert idle_intervals([(0, 100)], (10, 20)) == []


def test_idle_time_is_split_among_the_host_ops_and_the_rest() -> None:
    from benchmarks.profile import attribute_idle

    gaps = [(0, 10_000), (20_000, 30_000)]  # µs: 20 ms idle
    ops = [("aten::randn", 0, 6_000), ("aten::copy_", 8_000, 22_000), ("aten::mm", 12_000, 18_000)]
    got = attribute_idle(gaps, ops)
    assert got["idle_ms"] == 20 and got["gaps"] == 2
    # randn 6 ms; copy_ 2 ms before the kernels and 2 ms after; mm ran while the GPU was busy
    assert got["by_host_op"] == [{"op": "aten::randn", "ms": 6}, {"op": "aten::copy_", "ms": 4}]
    assert got["outside_any_op_ms"] == 10


def test_gpu_idle_reads_a_profile_of_one_call() -> None:
    from types import SimpleNamespace as NS

    from benchmarks.profile import CALL_RANGE, gpu_idle

    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA

    def ev(name, start, end, device=cpu, parent=None, thread=1, id_=0):
        return NS(
            name=name, time_range=NS(start=start, end=end), device_type=device,
            cpu_parent=parent, thread=thread, id=id_,
        )  # fmt: skip

    call = ev(CALL_RANGE, 0, 100, id_=1)
    events = [
        call,
        ev("aten::randn", 0, 20, parent=call, id_=2),
        ev("aten::normal_", 1, 19, parent=NS(id=2), id_=3),  # a grandchild: not counted again
        ev("aten::copy_", 80, 100, parent=call, id_=4),
        ev("aten::randn", 0, 50, parent=NS(id=9), thread=2, id_=5),  # another thread's op
        ev("gemm_kernel", 30, 70, device=cuda),
        ev(
            CALL_RANGE, 5, 95, device=cuda
        ),  # its mirror on the GPU timeline: no kernel, no busy time
    ]
    got = gpu_idle(events)
    assert got["idle_ms"] == 60e-3 and got["gaps"] == 2
    assert got["by_host_op"] == [
        {"op": "aten::randn", "ms": 20e-3},
        {"op": "aten::copy_", "ms": 20e-3},
    ]
    assert abs(got["outside_any_op_ms"] - 20e-3) < 1e-12
    assert gpu_idle([e for e in events if e.device_type == cpu]) is None  # no kernels: no GPU


def test_the_call_range_mirror_is_not_a_kernel() -> None:
    """The CUDA profiler mirrors CALL_RANGE onto the GPU timeline; the 7683c7a round's profiles
    counted it as a kernel (1.41 ms of 'other' in the batch-1 text encoder)."""
    from types import SimpleNamespace as NS

    from benchmarks.profile import CALL_RANGE, device_events

    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    events = [
        NS(name=CALL_RANGE, device_type=cpu),
        NS(name=CALL_RANGE, device_type=cuda),
        NS(name="nvjet_a", device_type=cuda),
        NS(name="aten::mm", device_type=cpu),
    ]
    assert [e.name for e in device_events(events)] == ["nvjet_a"]
