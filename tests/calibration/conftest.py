"""Q/DQ exports and held-out trajectories that several tests of tests/calibration read, made once
per session; the calibrations themselves (`calibrations`) are in tests/conftest.py, shared with
tests/export/test_quantized_build.py.

Held-out trajectories (other prompts and seeds than the calibration's) feed the parity tests.
Everything here needs ModelOpt; without it the tests skip with the pip line.
"""

from __future__ import annotations

import pytest

from calibration.trajectories import group_by_budget, record_dit_calls

DURATION_S = 1.0  # as the calibrations' (tests/conftest.py)
HELD_OUT_PROMPTS = ("a quiet harp melody over rain", "hard trap beat with 808s")
HELD_OUT_SEEDS = (7, 8)  # one batch of two takes per prompt


def require_modelopt() -> None:
    from calibration.recipes import import_modelopt
    from presto_common.errors import BackendUnavailable

    try:
        import_modelopt()
    except BackendUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def modelopt() -> None:
    """Skips the test, with the pip line, where ModelOpt cannot be imported."""
    require_modelopt()


@pytest.fixture(scope="session")
def held_out_calls(tiny_model):
    """budget -> the tiny model's DiT inputs along held-out trajectories (batch 2)."""
    calls = record_dit_calls(tiny_model, HELD_OUT_PROMPTS, HELD_OUT_SEEDS, DURATION_S)
    return group_by_budget(calls)


@pytest.fixture(scope="session")
def exported(calibrations, held_out_calls, tiny_model, tmp_path_factory):
    """get(precision, budget) -> QDQExport of the tiny DiT at the held-out calls' shape (cached)."""
    from export.quant_onnx import export_quantized_dit
    from export.quant_scales import load_calibration

    root = tmp_path_factory.mktemp("qdq")
    cache = {}

    def get(precision: str, budget: int):
        if (precision, budget) not in cache:
            calibration = load_calibration(calibrations[precision])
            x = held_out_calls[budget][0].x
            cache[precision, budget] = export_quantized_dit(
                tiny_model,
                budget,
                calibration,
                root / f"dit-b{budget}-{precision}.onnx",
                batch=x.shape[0],
                frames=x.shape[-1],
            )
        return cache[precision, budget]

    return get
