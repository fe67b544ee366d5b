"""One build of the small preset's CUDA torch packages per precision, shared by every GPU test.

    python -m pytest -q -rs -m gpu tests/gpu      # on the GPU machine; skipped without CUDA

`scripts/gpu_round.sh` runs this suite with the environment it needs: on our GPU image the default
`CXX=/opt/gcc/bin/g++` builds AOTInductor packages that crash at load, so outside that script set
`CXX=/usr/bin/g++` first.

The builds are `python -m export.build --preset small --backends torch --device cuda --precision P
--batch-sizes 1 --durations-s 2`, one process per precision, both at once (compilation is mostly
CPU work). PRESTO_GPU_BUILDS=DIR keeps them in DIR instead of pytest's temporary folder, so a second
session there reuses every artifact whose inputs did not change. export.build's reuse check compares
the config, the weights and the tool versions, not the export code: after changing `export/`, use a
fresh DIR (or none), or the tests judge the old packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# `small` has every feature of the paper-scale model (8 blocks and three layer budgets, text, BPM,
# stereo) at a size whose packages compile in well under a minute each; 2 s of audio (92 latent
# frames) keeps every run short. Parity at paper scale is what the figures in docs/measurements.md
# record; these tests hold every build and runtime change to the same checks at small scale.
PRESET = "small"
DURATION_S = 2.0
PRECISIONS = ("fp32", "bf16")
INIT_SEED = 0  # the seed of the random weights, which the reference uses to rebuild them


@dataclass(frozen=True)
class Build:
    """A build folder of torch packages, what it holds, and the command that made it."""

    preset: str
    precision: str
    device: str
    duration_s: float
    init_seed: int
    folder: Path
    argv: tuple[str, ...]


def build_argv(precision: str, out: Path, device: str = "cuda") -> list[str]:
    return [
        sys.executable,
        "-m",
        "export.build",
        "--preset",
        PRESET,
        "--backends",
        "torch",
        "--device",
        device,
        "--precision",
        precision,
        "--batch-sizes",
        "1",
        "--durations-s",
        f"{DURATION_S:g}",
        "--init-seed",
        str(INIT_SEED),
        "--out",
        str(out),
    ]


def build_all(root: Path, device: str = "cuda") -> dict[str, Build]:
    """Build every precision in parallel processes; fail with the tail of a failed build's log."""
    root.mkdir(parents=True, exist_ok=True)
    running = {}
    for precision in PRECISIONS:
        argv = build_argv(precision, root / f"{PRESET}-{device}-{precision}", device)
        log_path = root / f"build-{device}-{precision}.log"
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        running[precision] = (argv, proc, log_path)
    builds = {}
    for precision, (argv, proc, log_path) in running.items():
        code = proc.wait()
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        assert code == 0, f"{' '.join(argv[1:])} exited {code}; end of {log_path}:\n{tail}"
        builds[precision] = Build(
            PRESET, precision, device, DURATION_S, INIT_SEED, Path(argv[-1]), tuple(argv[1:])
        )
    return builds


@pytest.fixture(scope="session")
def gpu_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Build]:
    """{precision: Build} of the small preset's CUDA torch packages, built once per session."""
    kept = os.environ.get("PRESTO_GPU_BUILDS")
    root = Path(kept) if kept else tmp_path_factory.mktemp("gpu_builds")
    return build_all(root)


@pytest.fixture
def fp32_only():
    """TF32 off for matmuls and cuDNN during the test (restored after): the fp32 references of the
    parity tests are exact fp32, not TF32."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
