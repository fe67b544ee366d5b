"""Rebuild hints that can be pasted: `python -m pytest tests/runtime/test_hints.py`."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from export.build import main as build_main
from presto_common.errors import ArtifactError, BackendUnavailable, ShapeError
from presto_ref.checkpoint import random_model, save_checkpoint
from runtime.hints import rebuild_command, rebuild_hint
from runtime.manifest import MANIFEST_FILE, Manifest
from runtime.pipeline import Pipeline

BUILD = ["--backends", "onnx", "--durations-s", "1", "--no-verify", "-q"]
FRAMES_1S = 46  # the tiny preset's latent frames in 1 s


@pytest.fixture(scope="module")
def batch1(tmp_path_factory) -> Path:
    """The tiny preset built at batch 1, one 1 s bucket, ONNX only; copy it before changing it."""
    out = tmp_path_factory.mktemp("hints") / "tiny"
    assert build_main(["--preset", "tiny", *BUILD, "--out", str(out)]) == 0
    return out


def pasted(message: str) -> list[str]:
    """The export.build argv of the first `...` command in an error message."""
    command = shlex.split(re.search(r"`([^`]*)`", message).group(1))
    assert command[:3] == ["python", "-m", "export.build"], command
    return command[3:]


def test_a_pasted_hint_builds_the_missing_bucket_into_the_same_folder(
    batch1: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(batch1, tmp_path / "b1")
    with pytest.raises(ShapeError) as info:  # generate would run batch 2 as two batch-1 calls
        Pipeline(folder, device="cpu").bucket(2, duration_s=1.0)
    (line,) = str(info.value).splitlines()
    argv = pasted(line)
    assert argv[argv.index("--out") + 1] == str(folder)
    assert argv[argv.index("--batch-sizes") + 1] == "2,1"  # the new bucket, then those built
    assert "--preset" in argv and "--no-verify" in argv
    assert build_main([*argv, "-q"]) == 0
    pipe = Pipeline(folder, device="cpu")
    assert pipe.built_buckets() == [(1, FRAMES_1S), (2, FRAMES_1S)]  # batch 1 was kept
    audio = pipe.generate(["a", "b"], seeds=[0, 1], duration_s=1.0)
    assert audio.samples.shape[0] == 2


def test_the_manifest_records_its_source(batch1: Path, tmp_path: Path) -> None:
    source = Manifest.load(batch1).build_env["source"]
    assert source == {
        "preset": "tiny",
        "checkpoint": None,
        "init_seed": 0,
        "backends": ["onnx"],
        "precision": "fp32",
        "device": "cpu",
        "trt": None,
        "compute_capabilities": [],
        "verify": False,
        "quantization": None,
        "calibration": None,
        "fp8_attention": False,
    }


def test_a_hint_keeps_every_duration_and_budget(batch1: Path) -> None:
    manifest = Manifest.load(batch1)
    argv = shlex.split(rebuild_command(manifest, "out dir", durations_s=(2.0,), budgets=(3,)))
    assert argv[argv.index("--durations-s") + 1] == "2.00,1.00"
    assert argv[argv.index("--budgets") + 1] == "0,1,2,3"
    assert argv[-2:] == ["--out", "out dir"]  # quoted in the command, one argument when split


def test_budget_and_backend_hints_name_the_folder(batch1: Path, tmp_path: Path) -> None:
    partial = shutil.copytree(batch1, tmp_path / "partial")
    data = json.loads((partial / MANIFEST_FILE).read_text())
    data["artifacts"] = [a for a in data["artifacts"] if a["budget"] != 1]
    (partial / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ShapeError) as info:
        Pipeline(partial, device="cpu").generate(["a"], seeds=[0], duration_s=1.0)
    argv = pasted(str(info.value))
    assert argv[argv.index("--budgets") + 1] == "0,1,2"
    assert argv[argv.index("--out") + 1] == str(partial)
    with pytest.raises(BackendUnavailable) as info:
        Pipeline(batch1, backend="torch", device="cpu")
    argv = pasted(str(info.value))
    assert argv[argv.index("--backends") + 1] == "onnx,torch"


def test_a_corrupt_file_names_the_whole_command(batch1: Path, tmp_path: Path) -> None:
    corrupt = shutil.copytree(batch1, tmp_path / "corrupt")
    victim = next(corrupt.glob("vae_decoder*.onnx"))
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match=f"{victim.name} is corrupt") as info:
        Pipeline(corrupt, device="cpu").generate(["a"], seeds=[0], duration_s=1.0)
    argv = pasted(str(info.value))
    assert argv[argv.index("--out") + 1] == str(corrupt)


def test_a_checkpoint_build_names_its_checkpoint(batch1: Path, tmp_path: Path) -> None:
    manifest = Manifest.load(batch1)
    ckpt = save_checkpoint(random_model("tiny", 0), tmp_path / "ckpt")
    env = {**manifest.build_env}
    env["source"] = {**env["source"], "preset": None, "checkpoint": str(ckpt.absolute())}
    argv = shlex.split(rebuild_command(dataclasses.replace(manifest, build_env=env), "f"))
    assert argv[3:5] == ["--checkpoint", str(ckpt.absolute())] and "--preset" not in argv


def test_an_older_manifest_falls_back_to_the_model_name(batch1: Path) -> None:
    manifest = Manifest.load(batch1)
    env = {k: v for k, v in manifest.build_env.items() if k != "source"}
    older = dataclasses.replace(manifest, build_env=env)
    hint = rebuild_hint(older, "f", batch_sizes=(4,))
    argv = pasted(hint)
    assert argv[:2] == ["--preset", "tiny"] and argv[argv.index("--batch-sizes") + 1] == "4,1"
    assert "does not record what it was built from" in hint and "--checkpoint CKPT_DIR" in hint
