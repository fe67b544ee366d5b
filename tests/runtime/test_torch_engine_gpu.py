"""AOTInductor packages on CUDA: `python -m pytest -m gpu tests/runtime/test_torch_engine_gpu.py`.

On our GPU image prefix the command with `CXX=/usr/bin/g++`: its default `CXX=/opt/gcc/bin/g++`
builds packages that segfault on load (see export/torch_backend.py).

Compiles a small conv module and the tiny DiT on the GPU in fp32 and bf16, runs each package through
`runtime.torch_engine.TorchEngine` in a fresh interpreter that never imports presto_ref, compares with
eager PyTorch, and checks that a single-threaded engine can be captured in a CUDA graph. Skipped with
a reason where no CUDA device is present (tests/conftest.py).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.spec import DiTGraph
from export.torch_backend import compile_package
from presto_common.errors import ShapeError
from presto_common.names import torch_dtype
from runtime.torch_engine import TorchEngine

# Each test compiles on the GPU: 60-120 s apiece on an H100 with a cold Inductor cache.
pytestmark = [pytest.mark.gpu, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

# Loads a package on its GPU, runs it on saved inputs, saves the outputs, and fails if running the
# engine pulled in a package the runtime must not depend on.
CHILD = """
import sys, torch
from runtime.torch_engine import TorchEngine
package, inputs_file, outputs_file = sys.argv[1:]
engine = TorchEngine(package)
assert engine.device.type == "cuda", engine.device
inputs = [t.to(engine.device) for t in torch.load(inputs_file)]
outputs = engine(*inputs)
torch.cuda.synchronize()
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
        return h, h.float().mean(dim=(1, 2))  # (B, 8, T), (B,) fp32


def make_case(name: str, tiny_model: nn.Module) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """An fp32 CPU module and its CPU inputs."""
    g = torch.Generator().manual_seed(0)
    if name == "conv":
        torch.manual_seed(0)
        mask = torch.ones(2, 20, dtype=torch.bool)
        mask[1, 12:] = False
        return ConvNet().eval(), (torch.randn(2, 20, 16, generator=g), mask)
    cfg = tiny_model.config
    B, T, S = 2, 16, cfg.text.max_tokens
    text_mask = torch.zeros(B, S, dtype=torch.bool)
    text_mask[0, :10], text_mask[1, :3] = True, True
    inputs = (
        torch.randn(B, cfg.dit.latent_channels, T, generator=g) * 2.0,  # noisy latents at sigma 2
        torch.tensor([2.0, 0.5]),  # sigma
        torch.randn(B, S, cfg.text.d_model, generator=g),  # T5 tokens
        text_mask,
        torch.tensor([120.0, 90.0]),  # BPM
    )
    return DiTGraph(copy.deepcopy(tiny_model.denoiser), budget=1).eval(), inputs


def on_gpu(
    module: nn.Module, inputs: tuple[Tensor, ...], dtype: torch.dtype
) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """The module's weights in `dtype` on cuda; the conv case's float input follows the weights,
    the DiT keeps fp32 inputs (its preconditioning casts at the boundary)."""
    module = copy.deepcopy(module).to("cuda", dtype)
    cast_x = isinstance(module, ConvNet)
    moved = tuple(
        t.to("cuda", dtype) if cast_x and t.is_floating_point() else t.to("cuda") for t in inputs
    )
    return module, moved


def rel_l2(test: Tensor, reference: Tensor) -> float:
    return ((test.float() - reference.float()).norm() / reference.float().norm()).item()


@pytest.fixture(autouse=True)
def no_tf32():
    # Inductor reads these flags at compile time; eager and compiled fp32 then both use full fp32.
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cuda_packages")


def run_in_fresh_process(package: Path, inputs: tuple[Tensor, ...], tmp_path: Path) -> list[Tensor]:
    inputs_file, outputs_file = tmp_path / "inputs.pt", tmp_path / "outputs.pt"
    torch.save([t.cpu() for t in inputs], inputs_file)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(package), str(inputs_file), str(outputs_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"engine subprocess failed:\n{proc.stderr[-3000:]}"
    return torch.load(outputs_file)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["conv", "dit"])
def test_cuda_package_matches_eager(
    tiny_model: nn.Module, folder: Path, tmp_path: Path, name: str, precision: str
) -> None:
    cpu_module, cpu_inputs = make_case(name, tiny_model)
    module, inputs = on_gpu(cpu_module, cpu_inputs, torch_dtype(precision))
    build = compile_package(module, inputs, folder / f"{name}-{precision}.pt2", device="cuda")
    assert build.device.startswith("cuda:")
    outputs = run_in_fresh_process(build.path, inputs, tmp_path)

    with torch.no_grad():
        eager = module(*inputs)
        reference = copy.deepcopy(cpu_module).cuda()(*(t.cuda() for t in cpu_inputs))  # fp32
    eager = eager if isinstance(eager, tuple) else (eager,)
    reference = reference if isinstance(reference, tuple) else (reference,)
    assert len(outputs) == len(eager)
    for i, (got, want, ref) in enumerate(zip(outputs, eager, reference)):
        want, ref = want.cpu(), ref.cpu()
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.isfinite().all()
        if precision == "fp32":
            # Same cuBLAS GEMMs and attention kernel as eager (no autotuning); the fused Triton
            # pointwise and reduction kernels only reorder fp32 sums: ~1e-6 relative on O(1)
            # values. 1e-4 leaves margin; a wrong mask, budget or cast moves outputs by 1e-2 or more.
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"output {i}")
        else:
            # bf16 keeps 8 mantissa bits. Eager rounds every op's output to bf16, while fused
            # kernels keep intermediates in fp32 registers, so the two differ by a few bf16 ulps
            # per layer. Judge both against the fp32 model instead: the compiled graph may be at
            # most twice as far from it as eager bf16 is (plus a floor for exact-in-bf16 outputs).
            eager_err, compiled_err = rel_l2(want, ref), rel_l2(got, ref)
            assert compiled_err <= 2 * eager_err + 1e-3, (
                f"output {i}: compiled bf16 is {compiled_err:.2e} from fp32, eager bf16 {eager_err:.2e}"
            )


def test_cuda_engine_checks_device_and_captures_in_a_graph(
    tiny_model: nn.Module, folder: Path
) -> None:
    cpu_module, cpu_inputs = make_case("dit", tiny_model)
    module, inputs = on_gpu(cpu_module, cpu_inputs, torch.bfloat16)
    path = folder / "dit-graph.pt2"
    compile_package(module, inputs, path, device="cuda")
    engine = TorchEngine(path, run_single_threaded=True)
    assert engine.device == torch.device("cuda", torch.cuda.current_device())
    with pytest.raises(ShapeError, match=r"'x' .* is on cpu, but the engine runs on cuda"):
        engine(*cpu_inputs)

    # Outputs are fresh tensors: two calls do not share memory while both are alive.
    first, second = engine(*inputs)[0], engine(*inputs)[0]
    assert first.data_ptr() != second.data_ptr()

    # Warm up on a side stream, capture, then replay with new values written into the static inputs.
    static = tuple(t.clone() for t in inputs)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        engine(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        (captured,) = engine(*static)
    new_x = torch.randn_like(static[0])
    static[0].copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    (direct,) = engine(new_x, *static[1:])
    # The replay runs the very kernels of a direct call on the same inputs: bit-identical.
    torch.testing.assert_close(captured, direct, rtol=0, atol=0)
