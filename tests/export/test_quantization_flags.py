"""`export.build --quantization/--calibration` flags refused up front, before any model is loaded
or anything is built: `python -m pytest tests/export/test_quantization_flags.py`.

The calibrations (tiny preset) come from tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from export.build import main as build_main
from export.plan import plan_build
from presto_common.errors import ArtifactError, BackendUnavailable, ConfigError
from presto_ref.presets import get_preset

TINY = get_preset("tiny")


def test_quantization_and_calibration_come_together(calibrations):
    with pytest.raises(ConfigError, match="--quantization int8 needs --calibration DIR"):
        plan_build(TINY, backends=("onnx",), quantization="int8")
    with pytest.raises(ConfigError, match="without --quantization; add --quantization"):
        plan_build(TINY, backends=("onnx",), calibration=calibrations["int8"])
    with pytest.raises(ConfigError, match="--quantization 'int4' is unknown; choose from fp8"):
        plan_build(TINY, backends=("onnx",), quantization="int4", calibration=calibrations["int8"])


def test_a_calibration_of_another_precision_model_or_budgets_is_refused(calibrations, tmp_path):
    with pytest.raises(ConfigError, match="calibrated for fp8: pass --quantization fp8"):
        plan_build(TINY, backends=("onnx",), quantization="int8", calibration=calibrations["fp8"])
    other = dataclasses.replace(TINY, name="tiny-other", max_duration_s=2.0)
    with pytest.raises(ArtifactError, match=r"the model is tiny-other \(.*calibrate this model"):
        plan_build(other, backends=("onnx",), quantization="int8", calibration=calibrations["int8"])
    partial = tmp_path / "partial"
    shutil.copytree(calibrations["int8"], partial)
    summary = json.loads((partial / "calibration.json").read_text())
    del summary["budgets"]["0"]
    (partial / "calibration.json").write_text(json.dumps(summary))
    with pytest.raises(
        ConfigError, match=r"budget 0 is not in --calibration .*calibrated: \[1, 2\]"
    ):
        plan_build(TINY, backends=("onnx",), quantization="int8", calibration=partial)
    with pytest.raises(ArtifactError, match="is not a calibration folder"):
        plan_build(TINY, backends=("onnx",), quantization="int8", calibration=tmp_path)


def test_fp8_is_refused_up_front_for_compute_capabilities_below_8_9(calibrations):
    options = {"backends": ("onnx", "tensorrt"), "trt": "rtx", "quantization": "fp8"}
    with pytest.raises(ConfigError, match=r"compute-capabilities 8\.0,8\.9: FP8 needs 8\.9.*8\.0"):
        plan_build(
            TINY, **options, compute_capabilities=("8.0", "8.9"), calibration=calibrations["fp8"]
        )
    plan = plan_build(
        TINY, **options, compute_capabilities=("8.9",), calibration=calibrations["fp8"]
    )
    assert plan.quantization == "fp8" and plan.compute_capabilities == ("8.9",)


def test_fp8_is_refused_up_front_on_a_gpu_below_8_9(calibrations, monkeypatch):
    """Full TensorRT and CUDA torch packages build for the GPU at hand: an A100 is refused."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _=None: "NVIDIA A100")
    options = {"quantization": "fp8", "calibration": calibrations["fp8"]}
    with pytest.raises(ConfigError, match=r"--trt tensorrt: this GPU, NVIDIA A100, .* 8\.0"):
        plan_build(TINY, backends=("tensorrt",), trt="tensorrt", **options)
    with pytest.raises(ConfigError, match=r"--device cuda: this GPU, NVIDIA A100, .* 8\.0"):
        plan_build(TINY, backends=("torch",), device="cuda", **options)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _=None: (9, 0))
    assert plan_build(TINY, backends=("torch",), device="cuda", **options).quantization == "fp8"


def test_the_command_line_names_the_missing_flag(capsys, tmp_path):
    argv = ["--preset", "tiny", "--backends", "onnx", "--quantization", "int8"]
    assert build_main([*argv, "--out", str(tmp_path / "b"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--quantization int8 needs --calibration DIR" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_fp8_attention_is_refused_where_it_cannot_be_built(
    calibrations, tmp_path, monkeypatch, capsys
):
    """--fp8-attention: fp8 only, torch packages only, a calibration with attention ranges, and
    cudnn-frontend where the packages are compiled for CUDA."""
    fp8 = {"quantization": "fp8", "calibration": calibrations["fp8"], "fp8_attention": True}
    int8 = {**fp8, "quantization": "int8", "calibration": calibrations["int8"]}
    with pytest.raises(ConfigError, match="--fp8-attention with --quantization int8: .* add "):
        plan_build(TINY, backends=("torch",), **int8)
    with pytest.raises(ConfigError, match="--fp8-attention with --backends onnx: only the torch"):
        plan_build(TINY, backends=("onnx",), **fp8)
    old = tmp_path / "old"  # a calibration from before the attention ranges were recorded
    shutil.copytree(calibrations["fp8"], old)
    summary = json.loads((old / "calibration.json").read_text())
    for entry in summary["budgets"].values():
        entry["attention"] = {}
    (old / "calibration.json").write_text(json.dumps(summary))
    with pytest.raises(ArtifactError, match="no attention ranges for budget 0 .*calibrate again"):
        plan_build(TINY, backends=("torch",), **{**fp8, "calibration": old})
    plan = plan_build(TINY, backends=("onnx", "torch"), **fp8)
    assert plan.fp8_attention and not plan_build(TINY, backends=("torch",)).fp8_attention

    import runtime.fp8_attention as op

    def missing():
        raise BackendUnavailable(f"no cudnn-frontend here; {op.CUDNN_FRONTEND_PIP}")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _=None: (9, 0))
    monkeypatch.setattr(op, "import_cudnn_frontend", missing)
    with pytest.raises(BackendUnavailable, match="pip install nvidia-cudnn-frontend"):
        plan_build(TINY, backends=("torch",), device="cuda", **fp8)
    argv = ["--preset", "tiny", "--backends", "torch", "--fp8-attention"]
    assert build_main([*argv, "--out", str(tmp_path / "b"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "--fp8-attention without --quantization: FP8 attention" in err
    assert not (tmp_path / "b").exists()
