"""AOTInductor packages on the CPU: `python -m pytest tests/export/test_torch_backend.py -q`.

Compiles a small conv module and the tiny DiT (with its EDM preconditioning) to `.pt2` packages,
runs them through `runtime.torch_engine.TorchEngine` in a fresh interpreter that never imports
presto_ref, and compares with eager PyTorch. Each compile takes 5-20 s on a 2-core CPU once
Inductor's header cache is warm (the first compile on a machine adds ~20 s to build it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.spec import DiTGraph
from export.torch_backend import TorchBuild, compile_package
from presto_common.errors import ArtifactError, BackendUnavailable, EngineBuildError, ShapeError
from runtime.torch_engine import TorchEngine

ROOT = Path(__file__).resolve().parents[2]

# Loads a package, runs it on saved inputs, saves the outputs, and fails if running the engine
# pulled in a package the runtime must not depend on.
CHILD = """
import sys, torch
from runtime.torch_engine import TorchEngine
package, inputs_file, outputs_file = sys.argv[1:]
engine = TorchEngine(package)
inputs = [t.to(engine.device) for t in torch.load(inputs_file)]
outputs = engine(*inputs)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {"presto_ref", "export", "calibration"})
assert not leaked, f"the runtime imported {leaked}"
assert "torch._inductor" not in sys.modules, "loading should not need the compiler stack"
torch.save([o.cpu() for o in outputs], outputs_file)
"""


class ConvNet(nn.Module):
    """Linear, SiLU, a masked conv1d and a second output: x (B, T, 16), mask (B, T) bool."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 32)
        self.conv = nn.Conv1d(32, 8, kernel_size=3, padding=1)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv(F.silu(self.linear(x)).transpose(1, 2))  # (B, 8, T)
        h = h * mask[:, None, :]
        return h, h.mean(dim=(1, 2))  # (B, 8, T), (B,)


def conv_case() -> tuple[nn.Module, tuple[Tensor, ...]]:
    """The conv module in training mode (compile_package must export it in eval mode)."""
    torch.manual_seed(0)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 12:] = False
    return ConvNet().train(), (torch.randn(2, 20, 16), mask)


def dit_case(tiny_model: nn.Module, budget: int = 1) -> tuple[nn.Module, tuple[Tensor, ...]]:
    cfg = tiny_model.config
    B, T, S = 2, 16, cfg.text.max_tokens
    g = torch.Generator().manual_seed(0)
    text_mask = torch.zeros(B, S, dtype=torch.bool)
    text_mask[0, :10], text_mask[1, :3] = True, True
    inputs = (
        torch.randn(B, cfg.dit.latent_channels, T, generator=g) * 2.0,  # noisy latents at sigma 2
        torch.tensor([2.0, 0.5]),  # sigma
        torch.randn(B, S, cfg.text.d_model, generator=g),  # T5 tokens
        text_mask,
        torch.tensor([120.0, 90.0]),  # BPM
    )
    return DiTGraph(tiny_model.denoiser, budget), inputs


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model: nn.Module) -> dict:
    """Both cases compiled once: name -> (TorchBuild, inputs, eager outputs)."""
    out: dict[str, tuple[TorchBuild, tuple[Tensor, ...], tuple[Tensor, ...]]] = {}
    folder = tmp_path_factory.mktemp("packages")
    for name, (module, inputs) in {"conv": conv_case(), "dit": dit_case(tiny_model)}.items():
        was_training = module.training
        build = compile_package(module, inputs, folder / f"{name}.pt2", device="cpu")
        assert module.training == was_training, "compile_package did not restore the training flag"
        with torch.no_grad():
            eager = module(*inputs)
        out[name] = build, inputs, eager if isinstance(eager, tuple) else (eager,)
    return out


def run_in_fresh_process(package: Path, inputs: tuple[Tensor, ...], tmp_path: Path) -> list[Tensor]:
    inputs_file, outputs_file = tmp_path / "inputs.pt", tmp_path / "outputs.pt"
    torch.save(list(inputs), inputs_file)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(package), str(inputs_file), str(outputs_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"engine subprocess failed:\n{proc.stderr[-3000:]}"
    return torch.load(outputs_file)


# --- building ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["conv", "dit"])
def test_build_reports_the_package(built: dict, name: str) -> None:
    build, _, _ = built[name]
    assert build.path.is_file() and build.path.suffix == ".pt2"
    assert build.size_bytes == build.path.stat().st_size > 0
    assert build.device == "cpu" and build.torch_version == torch.__version__
    assert 0 < build.build_s < 300, f"build took {build.build_s:.1f} s"
    # The temporary folder beside the package is gone.
    assert sorted(p.name for p in build.path.parent.iterdir() if p.name.startswith(".")) == []


def test_package_records_the_signature(built: dict) -> None:
    engine = TorchEngine(built["dit"][0].path)
    assert [(i.name, i.dtype, i.shape) for i in engine.inputs] == [
        ("x", "float32", (2, 32, 16)),
        ("sigma", "float32", (2,)),
        ("text", "float32", (2, 128, 32)),
        ("text_mask", "bool", (2, 128)),
        ("bpm", "float32", (2,)),
    ]
    assert [(o.dtype, o.shape) for o in engine.outputs] == [("float32", (2, 32, 16))]
    assert engine.device == torch.device("cpu")


# --- running ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["conv", "dit"])
def test_engine_in_a_fresh_process_matches_eager(built: dict, name: str, tmp_path: Path) -> None:
    build, inputs, eager = built[name]
    outputs = run_in_fresh_process(build.path, inputs, tmp_path)
    assert len(outputs) == len(eager)
    for i, (got, want) in enumerate(zip(outputs, eager)):
        diff = (got - want).abs()
        where = tuple(int(k) for k in torch.unravel_index(diff.argmax(), diff.shape))
        # Inductor fuses the fp32 ops and reorders sums (matmul blocking, vectorised reductions),
        # so results differ from eager by rounding only: ~1e-7 per op, a few 1e-7 after the 4-block
        # DiT on O(1) values. 1e-5 absolute and relative leaves margin yet catches any real error
        # (a wrong mask, budget or dtype moves outputs by 1e-2 or more).
        torch.testing.assert_close(
            got,
            want,
            rtol=1e-5,
            atol=1e-5,
            msg=lambda m, i=i, d=diff, w=where: (
                f"output {i}: max abs diff {d.max():.2e} at {w}; {m}"
            ),
        )


def test_outputs_are_fresh_tensors(built: dict) -> None:
    build, inputs, _ = built["conv"]
    engine = TorchEngine(build.path)
    first = engine(*inputs)
    second = engine(*inputs)
    assert first[0].data_ptr() != second[0].data_ptr(), "outputs should not be reused buffers"
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_engine_rejects_inputs_it_was_not_built_for(built: dict) -> None:
    build, (x, mask), _ = built["conv"]
    engine = TorchEngine(build.path)
    with pytest.raises(ShapeError, match=r"takes 2 inputs \(x, mask\), got 1"):
        engine(x)
    with pytest.raises(ShapeError, match=r"'x' .* shape \(2, 21, 16\).*built for \(2, 20, 16\)"):
        engine(torch.randn(2, 21, 16), mask)
    with pytest.raises(ShapeError, match=r"'x' .* torch.float64, expected torch.float32"):
        engine(x.double(), mask)
    with pytest.raises(ShapeError, match=r"'mask' .* not contiguous"):
        engine(x, torch.ones(20, 2, dtype=torch.bool).t())


# --- errors -----------------------------------------------------------------------------------------


def test_missing_package_is_an_artifact_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pt2"
    with pytest.raises(ArtifactError, match=rf"{path}.*python -m export.build"):
        TorchEngine(path)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "not_aoti"])
def test_corrupt_package_is_an_artifact_error(built: dict, tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.pt2"
    if kind == "garbage":
        path.write_bytes(b"this is not a zip archive\n" * 100)
    elif kind == "truncated":
        path.write_bytes(built["conv"][0].path.read_bytes()[:100_000])
    else:  # a valid zip without an AOTInductor model, e.g. a torch.export.save file renamed
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model/data/something.json", json.dumps({}))
    with pytest.raises(ArtifactError, match=rf"{path}.*python -m export.build"):
        TorchEngine(path)


def test_cpu_package_refuses_a_cuda_device(built: dict) -> None:
    with pytest.raises(ArtifactError, match=r"compiled for cpu, but device='cuda'"):
        TorchEngine(built["conv"][0].path, device="cuda")


class DataDependent(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 2 if x.sum() > 0 else x  # branches on a value: not exportable


def test_export_failure_is_an_engine_build_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt2"
    with pytest.raises(
        EngineBuildError, match=r"torch.export failed for DataDependent on cpu"
    ) as info:
        compile_package(DataDependent(), (torch.randn(3),), path, device="cpu")
    assert info.value.__cause__ is not None, "the original exception must stay chained"
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == [], "a failed build must leave nothing behind"


def test_compile_failure_is_an_engine_build_error(tmp_path: Path) -> None:
    module, inputs = conv_case()
    with pytest.raises(
        EngineBuildError, match=r"AOTInductor compilation failed for ConvNet"
    ) as info:
        compile_package(module, inputs, tmp_path / "x.pt2", device="cpu", options={"no_such": 1})
    assert info.value.__cause__ is not None
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused_before_building(tmp_path: Path) -> None:
    module, inputs = conv_case()
    with pytest.raises(EngineBuildError, match=r"must end in \.pt2"):
        compile_package(module, inputs, tmp_path / "x.so", device="cpu")
    with pytest.raises(EngineBuildError, match=r"linear.weight of the module is on meta"):
        compile_package(ConvNet().to("meta"), inputs, tmp_path / "x.pt2", device="cpu")
    with pytest.raises(EngineBuildError, match=r"sample input 0 is a list"):
        compile_package(module, ([1.0], inputs[1]), tmp_path / "x.pt2", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_build_without_cuda_is_backend_unavailable(tmp_path: Path) -> None:
    module, inputs = conv_case()
    with pytest.raises(BackendUnavailable, match=r"device='cuda' but torch .* sees no CUDA device"):
        compile_package(module, inputs, tmp_path / "x.pt2", device="cuda")
