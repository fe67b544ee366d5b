"""`export`'s Python API (`build_folder` and friends) and the rebuild paths that the command line
shares with it: `python -m pytest tests/export/test_api.py`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import export
from export import build_folder, forward_flops
from export.build import main
from presto_common.errors import BackendUnavailable, ConfigError, PrestoError
from presto_ref.checkpoint import random_model
from presto_ref.config import BudgetSchedule, SamplerConfig
from presto_ref.presets import get_preset
from runtime.manifest import MANIFEST_FILE, SCHEMA_VERSION, Manifest

ROOT = Path(__file__).resolve().parents[2]


def test_the_api_returns_the_manifest_it_wrote(
    tmp_path: Path, tiny_onnx_build: Path, tiny_onnx_options: dict
) -> None:
    out = shutil.copytree(tiny_onnx_build, tmp_path / "tiny")
    manifest = Manifest.load(out)
    manifest.verify_files(out)
    assert manifest.model_name == "tiny"
    assert {a.component for a in manifest.artifacts} == {"text_encoder", "dit", "vae_decoder",
                                                         "stereo"}  # fmt: skip
    assert all(a.flops > 0 and a.weight_bytes > 0 for a in manifest.artifacts)
    # Built again with the same options, everything is reused and the manifest is the same.
    seen = []
    again = build_folder(out, **tiny_onnx_options, on_artifact=seen.append)
    assert again.to_json() == Manifest.load(out).to_json() == manifest.to_json()
    assert len(seen) == len(manifest.artifacts) and all(b.reused for b in seen)


def test_a_folder_of_another_schema_version_is_rebuilt(
    tmp_path: Path, capsys, tiny_onnx_build: Path
) -> None:
    version = 1  # an older toolkit's folder; a newer one (99) takes the same path
    out = shutil.copytree(tiny_onnx_build, tmp_path / "old")
    data = json.loads((out / MANIFEST_FILE).read_text())
    data["schema_version"] = version
    (out / MANIFEST_FILE).write_text(json.dumps(data))
    capsys.readouterr()

    argv = ["--preset", "tiny", "--backends", "onnx", "--durations-s", "1", "--no-verify",
            "--out", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, captured.err
    assert f"schema_version {version}" in warnings[0] and str(out) in warnings[0]
    assert "Traceback" not in captured.err and "error:" not in captured.err
    # Nothing was reused from it, and the folder now holds a fresh build of this schema.
    assert "reused" not in captured.out
    fresh = Manifest.load(out)
    assert fresh.schema_version == SCHEMA_VERSION
    fresh.verify_files(out)
    assert len(fresh.artifacts) == len(data["artifacts"])


def test_dpmpp_builds_the_dit_at_twice_the_takes(tmp_path: Path) -> None:
    # CFG++ evaluates D on the conditional and the unconditional input at every step: the DiT
    # engines take both at once (2B rows) for B takes; everything else stays at B.
    config = get_preset("tiny").replace(
        name="tiny-dpmpp",
        sampler=SamplerConfig(kind="dpmpp-2s", num_steps=2, budgets=BudgetSchedule((1,), ())),
    )
    model = random_model(config, 0).eval()
    manifest = build_folder(
        tmp_path / "dpmpp", model=model, backends=("onnx",), batch_sizes=(2,), durations_s=(0.5,)
    )
    batches = {a.component: a.batch for a in manifest.artifacts}
    assert batches == {"text_encoder": 2, "dit": 4, "vae_decoder": 2, "stereo": 2}
    (dit,) = manifest.find("dit", "onnx")
    assert dit.budget == 1 and dit.inputs[0].shape == (4, 32, dit.frames)
    assert dit.build["guidance_batch"]["takes"] == 2 and dit.build["guidance_batch"]["rows"] == 4
    assert dit.build["parity"]["rel_l2"] < 1e-5  # checked against the reference at 4 rows
    assert (
        dit.flops
        == forward_flops(config, "dit", 4, dit.frames, 1)
        == 2 * forward_flops(config, "dit", 2, dit.frames, 1)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"backends": "onnx"}, ConfigError, r"backends='onnx' must be a list or tuple of str"),
        ({"backends": ("onnx", "coreml")}, ConfigError, r"unknown \['coreml'\]"),
        ({"precision": "fp8"}, ConfigError, "precision 'fp8' is unknown"),
        ({"batch_sizes": (1, 0)}, ConfigError, "batch size 0 must be >= 1"),
        ({"batch_sizes": (1.5,)}, ConfigError, r"batch_sizes=\(1.5,\) holds 1.5; expected int"),
        ({"durations_s": (60,)}, ConfigError, "duration bucket 60 s is outside what tiny takes"),
        ({"durations_s": (0.001,)}, ConfigError, "a bucket of 0 frames"),
        ({"budgets": (4,)}, ConfigError, "budget 4 cannot be built: tiny has 4 blocks"),
        ({"trt": "cuda"}, ConfigError, "trt='cuda' is not a TensorRT flavor"),
        ({"compute_capabilities": ("8.0",)}, ConfigError, "are for TensorRT-RTX engines"),
        ({"reuse_from": ("nowhere",)}, ConfigError, "--reuse-from nowhere: no manifest.json"),
        ({"preset": "tiny"}, ConfigError, "build_folder takes one model"),
        ({"model": "tiny"}, ConfigError, "model is a str; pass a presto_ref Presto"),
    ],
)
def test_bad_values_are_typed_errors_and_write_nothing(
    tmp_path: Path, tiny_model, kwargs: dict, error: type, message: str
) -> None:
    options = {"model": tiny_model, "backends": ("onnx",), **kwargs}
    with pytest.raises(error, match=message):
        build_folder(tmp_path / "out", **options)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_backend_unavailable(tmp_path: Path, tiny_model) -> None:
    with pytest.raises(BackendUnavailable, match="device 'cuda' asked for, but CUDA"):
        build_folder(tmp_path / "out", model=tiny_model, backends=("torch",), device="cuda")
    assert issubclass(BackendUnavailable, PrestoError)


def test_out_must_be_a_path(tiny_model) -> None:
    with pytest.raises(ConfigError, match="out=None must be a folder path"):
        build_folder(None, model=tiny_model)


def test_a_model_off_fp32_is_refused(tmp_path: Path) -> None:
    half = random_model("tiny", 0).to(torch.bfloat16)
    with pytest.raises(ConfigError, match=r"model is torch.bfloat16 on cpu; .* model.float\(\)"):
        build_folder(tmp_path / "out", model=half, backends=("onnx",))
    assert list(tmp_path.iterdir()) == []


def test_preset_and_checkpoint_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both given; a build takes one model"):
        export.load_model(preset="tiny", checkpoint=tmp_path)


def test_the_public_names_are_exported_and_import_nothing_heavy() -> None:
    assert sorted(export.__all__) == sorted(set(export.__all__))
    assert all(hasattr(export, name) and not name.startswith("_") for name in export.__all__)
    code = "import sys, export; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    heavy = {"onnx", "onnxruntime", "polygraphy", "tensorrt", "tensorrt_rtx"}
    assert not heavy & {m.split(".")[0] for m in loaded}


def test_build_folder_and_plan_build_share_their_defaults() -> None:
    """build_folder passes its build options to plan_build one by one: the two signatures must
    name the same options with the same defaults, or a default would silently differ by entry."""
    import inspect

    from export.plan import plan_build

    api = inspect.signature(build_folder).parameters
    plan = inspect.signature(plan_build).parameters
    shared = [name for name in plan if name != "config"]
    assert all(name in api for name in shared), sorted(set(shared) - set(api))
    assert {n: api[n].default for n in shared} == {n: plan[n].default for n in shared}
