"""`python -m export.build` end to end on the CPU: `python -m pytest tests/export/test_build.py`.

One module-scoped build of the `small` preset (every component and every budget of its schedule, a
2 s bucket): ONNX files checked against the reference on ONNX Runtime's CPU provider, and, where the
TensorRT-RTX wheels are installed, an engine per file built ahead of time for sm_80.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from export import forward_cost, trt_build
from export.build import main
from export.spec import make_specs
from export.verify import compare, reference_output, run_onnx
from presto_ref.checkpoint import random_model, save_checkpoint
from runtime.manifest import Manifest

HAVE_RTX = any(importlib.util.find_spec(m) for m in ("tensorrt_rtx", "tensorrt_rtx_bindings"))
needs_rtx = pytest.mark.skipif(not HAVE_RTX, reason="TensorRT-RTX wheels are not installed")
BACKENDS = "onnx,tensorrt" if HAVE_RTX else "onnx"


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "small"
    IMPORTS.clear()
    args = [
        "--preset",
        "small",
        "--backends",
        BACKENDS,
        "--durations-s",
        "2",
        "--out",
        str(out),
        "-q",
    ]
    if HAVE_RTX:
        args += ["--trt", "rtx", "--compute-capabilities", "8.0"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trt_build, "import_tensorrt", counted(trt_build.import_tensorrt))
        assert main(args) == 0
    return out


IMPORTS: list[str] = []  # the flavors small_build's import_tensorrt calls asked for


def counted(import_tensorrt):
    def wrapper(flavor: str):
        IMPORTS.append(flavor)
        return import_tensorrt(flavor)

    return wrapper


def test_every_component_and_budget_is_built(small_build: Path) -> None:
    manifest = Manifest.load(small_build)
    manifest.verify_files(small_build)
    budgets = {a.budget for a in manifest.find("dit", "onnx")}
    assert budgets == {0, 2, 4}  # the distinct budgets of small's [4, 2, 2, 0, 0]
    for component in ("text_encoder", "vae_decoder", "stereo"):
        assert len(manifest.find(component, "onnx")) == 1
    assert manifest.sampler.step_budgets == (4, 2, 0, 0)
    assert manifest.sampler.sigmas[0] == pytest.approx(80.0)
    assert {a.frames for a in manifest.artifacts if a.frames} == {92}  # 2 s = 91.9 frames


def test_onnx_matches_the_reference_on_onnx_runtime(small_build: Path) -> None:
    # fp32 ONNX on ORT's CPU provider against eager PyTorch: the same fp32 maths in another order
    # gives relative L2 errors of 1e-7..1e-6 (measured); 1e-5 leaves room and still catches a wrong
    # op, a dropped block or a wrong cast (those give 1e-2 or more).
    manifest = Manifest.load(small_build)
    model = random_model("small", 0).eval()
    specs = {s.name: s for s in make_specs(model, "fp32", frames=(92,))}
    for art in manifest.find("dit", "onnx") + [
        a for a in manifest.artifacts if a.backend == "onnx" and a.component != "dit"
    ]:
        spec = specs[Path(art.file).stem]
        inputs = spec.sample_inputs(seed=3)
        parity = compare(
            reference_output(model, spec, inputs), run_onnx(small_build / art.file, spec, inputs)
        )
        assert parity.rel_l2 < 1e-5, f"{art.file}: {parity}"
        # The build recorded its own check with the same bound.
        assert art.build["parity"]["rel_l2"] < 1e-5


@needs_rtx
def test_engines_match_the_manifest(small_build: Path) -> None:
    from export.trt_build import network_io

    manifest = Manifest.load(small_build)
    engines = [a for a in manifest.artifacts if a.backend == "tensorrt"]
    assert len(engines) == len([a for a in manifest.artifacts if a.backend == "onnx"]) == 6
    for art in engines:
        assert (small_build / art.file).stat().st_size > 0
        assert art.build["compute_capabilities"] == ["8.0"]
        inputs, outputs = network_io(small_build / art.file.replace(".plan", ".onnx"), "rtx")
        assert [(n, d, tuple(s)) for n, d, s in inputs] == [
            (t.name, t.dtype, t.shape) for t in art.inputs
        ]
        assert [(n, d, tuple(s)) for n, d, s in outputs] == [
            (t.name, t.dtype, t.shape) for t in art.outputs
        ]


@needs_rtx
def test_tensorrt_is_imported_once_per_build(small_build: Path) -> None:
    assert IMPORTS == ["rtx"]


def test_every_artifact_records_its_cost(small_build: Path) -> None:
    manifest = Manifest.load(small_build)
    config = random_model("small", 0).config
    for art in manifest.artifacts:
        cost = forward_cost(config, art.component, art.batch, art.frames, art.budget, art.precision)
        assert (art.flops, art.weight_bytes) == (cost.flops, cost.weight_bytes) != (0, 0), art.file
    # A budget drops whole blocks: fewer FLOPs and fewer weights read.
    dits = sorted(manifest.find("dit", "onnx"), key=lambda a: a.budget)
    assert [a.budget for a in dits] == [0, 2, 4]
    assert dits[0].flops > dits[1].flops > dits[2].flops
    assert dits[0].weight_bytes > dits[1].weight_bytes > dits[2].weight_bytes


def test_a_second_build_reuses_everything(small_build: Path, capsys) -> None:
    before = Manifest.load(small_build)
    args = [
        "--preset",
        "small",
        "--backends",
        BACKENDS,
        "--durations-s",
        "2",
        "--out",
        str(small_build),
    ]
    if HAVE_RTX:
        args += ["--trt", "rtx", "--compute-capabilities", "8.0"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.count("reused") == len(before.artifacts)
    after = Manifest.load(small_build)
    assert [a.sha256 for a in after.artifacts] == [a.sha256 for a in before.artifacts]


def tiny_build(out: Path, *extra: str) -> list[str]:
    """argv of a quick tiny ONNX build (1 s bucket, no ORT check) into `out`: conftest.TINY_ONNX."""
    return ["--preset", "tiny", "--backends", "onnx", "--durations-s", "1", "--no-verify",
            "--out", str(out), "-q", *extra]  # fmt: skip


def reused_count(capsys) -> int:
    return capsys.readouterr().out.count("reused")


def test_other_weights_are_rebuilt_not_reused(
    tmp_path: Path, capsys, tiny_onnx_build: Path
) -> None:
    # Same config, other weights (a retrained checkpoint): reusing would ship the old engines.
    out = shutil.copytree(tiny_onnx_build, tmp_path / "b")  # seed 0
    first = Manifest.load(out)
    capsys.readouterr()
    assert main(tiny_build(out, "--init-seed", "1")) == 0
    assert reused_count(capsys) == 0
    second = Manifest.load(out)
    assert first.config_hash == second.config_hash
    assert not {a.sha256 for a in first.artifacts} & {a.sha256 for a in second.artifacts}


def test_buckets_built_apart_are_assembled_with_reuse_from(
    tmp_path: Path, capsys, tiny_onnx_build: Path
) -> None:
    one, two = shutil.copytree(tiny_onnx_build, tmp_path / "one"), tmp_path / "two"  # batch 1
    assert main(tiny_build(two, "--batch-sizes", "2")) == 0
    capsys.readouterr()
    assert main(tiny_build(one, "--batch-sizes", "1,2", "--reuse-from", str(two))) == 0
    merged = Manifest.load(one)
    merged.verify_files(one)
    # batch 1: text encoder + 3 DiT budgets + VAE + stereo; batch 2 the same without its text
    # encoder (two's batch-2 encoder is not taken: the batch-1 one serves every batch).
    assert reused_count(capsys) == len(merged.artifacts) == 6 + 5
    assert {a.batch for a in merged.find("text_encoder", "onnx")} == {1}
    assert {a.batch for a in merged.find("dit", "onnx")} == {1, 2}
    # The two folders are left as they were.
    assert len(Manifest.load(two).find("text_encoder", "onnx")) == 1


def test_reuse_from_a_folder_without_a_build(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(tiny_build(out, "--reuse-from", str(tmp_path / "nowhere"))) == 1
    err = capsys.readouterr().err
    assert "--reuse-from" in err and "no manifest.json there" in err
    assert not out.exists()


def test_bf16_export_keeps_fp32_io(tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    assert (
        main(
            [
                "--preset",
                "tiny",
                "--backends",
                "onnx",
                "--precision",
                "bf16",
                "--durations-s",
                "1",
                "--no-verify",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    import onnx

    manifest = Manifest.load(out)
    for art in manifest.artifacts:
        graph = onnx.load(str(out / art.file)).graph
        floats = [i for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
        assert floats or art.component == "text_encoder"
        weights = {init.data_type for init in graph.initializer if len(init.dims) >= 2}
        assert onnx.TensorProto.BFLOAT16 in weights, f"{art.file} has no bf16 weights"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budgets", "9"], "budget 9 cannot be built: tiny has 4 blocks"),
        (["--durations-s", "60"], "duration bucket 60 s is outside what tiny takes"),
        (["--batch-sizes", "0"], "batch size 0 must be >= 1"),
        (["--backends", "onnx,coreml"], "unknown \\['coreml'\\]"),
        (["--durations-s", "a,b"], "cannot read 'a,b'"),
    ],
)
def test_bad_options_exit_1_and_write_nothing(tmp_path: Path, capsys, args, message) -> None:
    out = tmp_path / "out"
    assert main(["--preset", "tiny", "--backends", "onnx", "--out", str(out), *args]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and __import__("re").search(message, err[0]), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="full TensorRT is installed"
)
def test_missing_tensorrt_is_a_clear_error(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert (
        main(["--preset", "tiny", "--backends", "tensorrt", "--trt", "tensorrt", "--out", str(out)])
        == 1
    )
    assert "tensorrt" in capsys.readouterr().err.lower()
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_that_does_not_match_its_config(tmp_path: Path, capsys) -> None:
    ckpt = save_checkpoint(random_model("tiny", 0), tmp_path / "ckpt")
    data = json.loads((ckpt / "config.json").read_text())
    data["config"]["dit"]["width"] = 96
    (ckpt / "config.json").write_text(json.dumps(data))
    assert (
        main(["--checkpoint", str(ckpt), "--backends", "onnx", "--out", str(tmp_path / "out")]) == 1
    )
    assert "does not match its config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failed_build_leaves_nothing(tmp_path: Path, monkeypatch, capsys) -> None:

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("onnx.save", full_disk)
    out = tmp_path / "out"
    assert (
        main(["--preset", "tiny", "--backends", "onnx", "--durations-s", "1", "--out", str(out)])
        == 1
    )
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_has_examples(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_reference_output_is_the_pipeline_stage() -> None:
    # The graph wrappers compute what the pipeline's stages compute (no hidden divergence).
    model = random_model("tiny", 0).eval()
    spec = next(s for s in make_specs(model, "fp32", frames=(10,)) if s.component == "vae_decoder")
    (latents,) = spec.sample_inputs()
    with torch.no_grad():
        np.testing.assert_allclose(
            reference_output(model, spec, (latents,)), model.decode(latents).numpy(), rtol=0, atol=0
        )
