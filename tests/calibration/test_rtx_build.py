"""The Q/DQ DiT graphs build into TensorRT-RTX engines ahead of time, on a machine without a GPU.

INT8 Q/DQ builds for the A100 (sm_80); FP8 E4M3 needs Ada or later (sm_89+), and RTX refuses it for
sm_80 at build time. Run: python -m pytest tests/calibration/test_rtx_build.py
"""

from __future__ import annotations

import importlib.util

import pytest

from presto_common.errors import EngineBuildError

HAS_RTX = any(importlib.util.find_spec(m) for m in ("tensorrt_rtx", "tensorrt_rtx_bindings"))

pytestmark = pytest.mark.skipif(
    not HAS_RTX,
    reason="TensorRT-RTX wheels not installed: pip install "
    "tensorrt-rtx-cu13-bindings==1.7.1.116 tensorrt-rtx-cu13-libs==1.7.1.116",
)


@pytest.fixture
def trt_build():
    """export.trt_build, skipping where Polygraphy is bound to full TensorRT (tests/conftest.py
    binds it to RTX where RTX is the only TensorRT installed)."""
    from export import trt_build

    if trt_build.polygraphy_flavor() == "tensorrt":
        pytest.skip("polygraphy is bound to full TensorRT in this process; run this file alone")
    return trt_build


@pytest.mark.parametrize(("precision", "target"), [("int8", "8.0"), ("fp8", "8.9")])
def test_quantized_dit_builds_with_tensorrt_rtx(exported, trt_build, tmp_path, precision, target):
    e = exported(precision, 1)
    engine = tmp_path / f"{e.spec.name}.plan"
    build = trt_build.build_engine(e.path, engine, flavor="rtx", compute_capabilities=[target])
    assert engine.is_file() and engine.stat().st_size == build.size_bytes > 0
    assert [name for name, _, _ in build.inputs] == [t.name for t in e.spec.inputs]


def test_fp8_is_refused_for_the_a100(exported, trt_build, tmp_path):
    e = exported("fp8", 1)
    with pytest.raises(EngineBuildError, match="Cannot compile for target.*sm80"):
        trt_build.build_engine(
            e.path, tmp_path / "x.plan", flavor="rtx", compute_capabilities=["8.0"]
        )
    assert list(tmp_path.iterdir()) == []
