"""benchmarks.latency's refusals on the CPU: `python -m pytest tests/benchmarks/test_latency_errors.py -q`.

Usage errors exit 2 with argparse's message; user errors (a checkpoint of another config, an eager
backend without presto_ref) exit 1 with their message. The timed runs, --preset and the
--compare exit codes are tested in test_latency.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks import latency

FAST = ["--device", "cpu", "--runs", "2", "--warmup", "0", "-q"]  # as in test_latency.py


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backends", "onnxruntime,tensorflow"], "unknown backend 'tensorflow'"),
        (["--backends", "torch,torch"], "backend torch is listed twice"),
        (["--checkpoint", "ckpt"], "--checkpoint only applies to eager-fp32 / eager-bf16"),
        (["--batch-sizes", "1,4"], "--batch-sizes only apply with --preset"),
        (["--preset", "tiny", "--batch-sizes", "1,x"], "--batch-sizes 1,x: expected a comma"),
    ],
)
def test_usage_errors(
    build: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        latency.main(["--engines", str(build), *FAST, *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_neither_engines_nor_preset(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        latency.main(FAST)
    assert exc.value.code == 2
    assert "give --engines DIR (a build folder), or --preset NAME" in capsys.readouterr().err


def test_checkpoint_of_another_config(
    build: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from presto_ref.checkpoint import random_model, save_checkpoint
    from presto_ref.presets import get_preset

    other = save_checkpoint(random_model(get_preset("tiny").replace(name="other")), tmp_path / "c")
    argv = ["--engines", str(build), *FAST, "--backends", "eager-fp32", "--checkpoint", str(other)]
    assert latency.main(argv) == 1
    assert "the build was made from" in capsys.readouterr().err


def test_eager_without_presto_ref(
    build: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "presto_ref", None)  # makes `import presto_ref` fail
    assert latency.main(["--engines", str(build), *FAST, "--backends", "eager-bf16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: backend eager-bf16 needs presto_ref")
