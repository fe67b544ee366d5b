"""The dpmpp-2s chain in a CUDA graph: `python -m pytest -m gpu tests/runtime/test_sampling_gpu.py`.

On our GPU image prefix the command with `CXX=/usr/bin/g++` (see tests/gpu/conftest.py). Builds the
tiny dpmpp-2s checkpoint of tests/runtime/conftest.py as CUDA torch packages (fp32, batches 1 and 2,
1 s) and checks, for the DiT's [cond; uncond] call at 2B and its two calls at B, that the replayed
graph equals the uncaptured chain bit for bit. Skipped with a reason where no CUDA device is present.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runtime import Pipeline

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def cuda_build(tmp_path_factory, dpmpp_model) -> Path:
    from export.build import main as build_main
    from presto_ref.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("dpmpp_cuda")
    checkpoint = save_checkpoint(dpmpp_model, root / "checkpoint")
    args = ["--checkpoint", str(checkpoint), "--backends", "torch", "--device", "cuda"]
    args += ["--batch-sizes", "1,2", "--durations-s", "1", "--no-verify", "-q"]
    assert build_main([*args, "--out", str(root / "build")]) == 0
    return root / "build"


def test_dpmpp_2s_graph_replay_equals_the_uncaptured_chain(
    cuda_build: Path, split_layouts, tmp_path: Path
) -> None:
    B, one_call, two_calls = split_layouts(cuda_build, tmp_path)
    for name, folder in (("one call", one_call), ("two calls", two_calls)):
        graph = Pipeline(folder, backend="torch", device="cuda", cuda_graph=True)
        plain = Pipeline(folder, backend="torch", device="cuda", cuda_graph=False)
        outputs = {}
        for label, pipe in (("graph", graph), ("plain", plain)):
            bucket = pipe.bucket(B, duration_s=1.0)
            assert bucket.sampler_kind == "dpmpp-2s"
            assert bucket.dit_batch == (2 * B if name == "one call" else B)
            runs = []
            for seed, prompt in ((0, "warm lofi piano"), (1, "fast drum and bass"), (0, None)):
                prompt = prompt or "warm lofi piano"
                text, mask = bucket.encode_text([prompt] * B)
                noise = bucket.noise([seed + 10 * b for b in range(B)])
                bpm = torch.full((B,), 100.0, device="cuda")
                width = torch.full((B,), 0.7, device="cuda")
                runs.append([t.cpu() for t in bucket.run(text, mask, bpm, width, noise)])
            outputs[label] = runs
        assert graph.bucket(B, duration_s=1.0).captured, f"{name}: no graph was captured"
        # A replay launches the very kernels of the uncaptured chain on the same values, so any
        # difference is a bug (an input not copied in, an output buffer reused too early).
        for i, (got, want) in enumerate(zip(outputs["graph"], outputs["plain"])):
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=0, atol=0, msg=f"{name}, run {i}")
        assert not torch.equal(outputs["graph"][0][1], outputs["graph"][1][1]), name
        assert torch.equal(outputs["graph"][0][1], outputs["graph"][2][1]), name
