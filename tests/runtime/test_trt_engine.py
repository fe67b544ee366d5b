"""The TensorRT engine wrapper: `python -m pytest tests/runtime/test_trt_engine.py`.

Running an engine needs a CUDA GPU that the engine was built for and a TensorRT that can load it;
those tests are marked `trt` and `gpu` and skip with the reason elsewhere. The refusals run anywhere.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from presto_common.errors import ArtifactError
from runtime.engines import backend_available
from runtime.manifest import Artifact, TensorInfo
from runtime.trt_engine import check_compute_capability


def artifact(**build) -> Artifact:
    return Artifact(
        component="vae_decoder",
        backend="tensorrt",
        file="vae.plan",
        sha256="0" * 64,
        size_bytes=1,
        precision="bf16",
        inputs=(TensorInfo("latents", "float32", (1, 32, 46)),),
        outputs=(TensorInfo("audio", "float32", (1, 1, 44160)),),
        batch=1,
        frames=46,
        build=build,
    )


def test_tensorrt_backend_says_why_it_cannot_run_here() -> None:
    reason = backend_available("tensorrt")
    if torch.cuda.is_available() and importlib.util.find_spec("tensorrt"):
        assert reason is None
    else:
        assert reason and ("TensorRT" in reason or "CUDA" in reason)


@pytest.mark.gpu
def test_an_engine_for_other_gpus_is_refused() -> None:
    major, minor = torch.cuda.get_device_capability()
    other = "8.6" if (major, minor) != (8, 6) else "8.9"
    with pytest.raises(ArtifactError, match=f"built for compute capability {other}"):
        check_compute_capability(
            artifact(compute_capabilities=[other], trt="rtx"), torch.device("cuda")
        )


@pytest.mark.gpu
@pytest.mark.trt
def test_rtx_engine_runs_and_matches_onnx_runtime(tmp_path: Path) -> None:
    """Build the tiny preset's decoder for this GPU with TensorRT-RTX and compare with ORT (fp32)."""
    from export.build import main as build_main
    from runtime.manifest import Manifest
    from runtime.pipeline import Pipeline

    major, minor = torch.cuda.get_device_capability()
    if f"SM{major}{minor}" not in ("SM80", "SM86", "SM89", "SM120"):
        pytest.skip(f"TensorRT-RTX has no target for this GPU (sm_{major}{minor})")
    out = tmp_path / "b"
    assert (
        build_main(
            [
                "--preset",
                "tiny",
                "--backends",
                "onnx,tensorrt",
                "--trt",
                "rtx",
                "--durations-s",
                "1",
                "--compute-capabilities",
                f"{major}.{minor}",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    Manifest.load(out)
    trt = Pipeline(out, backend="tensorrt", device="cuda", cuda_graph=False)
    ort = Pipeline(out, backend="onnxruntime", device="cpu")
    a = trt.generate(["a"], seeds=[0], duration_s=1.0).samples
    b = ort.generate(["a"], seeds=[0], duration_s=1.0).samples
    # TF32 is off in these fp32 engines, so only kernel summation order differs.
    assert float(((a - b) ** 2).sum() ** 0.5 / (b**2).sum() ** 0.5) < 1e-3
