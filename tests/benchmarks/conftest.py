"""What every benchmarks test shares: one tiny ONNX build, and torch on one CPU thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

DURATION_S = 0.25  # 11 latent frames: the shortest bucket that keeps every stage's work non-trivial


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Batch buckets 1 and 2 at 0.25 s (11 latent frames): batch 2 serves the max-batch tests.

    Tests must not write into it; copy it first (shutil.copytree) to build into it.
    """
    pytest.importorskip("onnxruntime")
    import export

    out = tmp_path_factory.mktemp("benchmarks") / "tiny"
    export.build_folder(
        out,
        preset="tiny",
        backends=("onnx",),
        batch_sizes=(1, 2),
        durations_s=(DURATION_S,),
        verify=False,
    )
    return out


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Eager torch on one thread: on a small, shared CPU its threads otherwise wait on each other
    (and on ONNX Runtime's) for seconds per call, which only slows these tests down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
