"""Calibrations and Q/DQ exports that several tests of tests/calibration read, made once per session.

The tiny preset, 1 s of audio, three of the shipped prompts and one seed: every budget of the tiny
schedule (2, 1, 0) is calibrated in a few seconds. Held-out trajectories (other prompts and seeds)
feed the parity tests. Everything here needs ModelOpt; without it the tests skip with the pip line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.trajectories import PROMPTS_FILE, group_by_budget, read_prompts, record_dit_calls

DURATION_S = 1.0
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
def calibrations(tmp_path_factory) -> dict[str, Path]:
    """precision -> a calibration folder written by `python -m calibration.calibrate`."""
    require_modelopt()
    from calibration.calibrate import main

    root = tmp_path_factory.mktemp("calibration")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(read_prompts(PROMPTS_FILE)[:3]) + "\n")
    out = {}
    for precision in ("int8", "fp8"):
        out[precision] = root / precision
        argv = ["--preset", "tiny", "--precision", precision, "--duration-s", str(DURATION_S)]
        argv += ["--prompts", str(prompts), "--seeds", "1", "-o", str(out[precision]), "-q"]
        assert main(argv) == 0, f"calibration failed: {argv}"
    return out


@pytest.fixture(scope="session")
def held_out_calls(tiny_model):
    """budget -> the tiny model's DiT inputs along held-out trajectories (batch 2)."""
    calls = record_dit_calls(tiny_model, HELD_OUT_PROMPTS, HELD_OUT_SEEDS, DURATION_S)
    return group_by_budget(calls)


@pytest.fixture(scope="session")
def exported(calibrations, held_out_calls, tiny_model, tmp_path_factory):
    """get(precision, budget) -> QDQExport of the tiny DiT at the held-out calls' shape (cached)."""
    from calibration.qdq import export_quantized_dit
    from calibration.scales import load_calibration

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
