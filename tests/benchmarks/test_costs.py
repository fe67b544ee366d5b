"""benchmarks.costs on a real bucket of the tiny build: `python -m pytest tests/benchmarks -q`.

A stage's FLOPs and weight bytes add up the manifest artifacts its engine calls run; the eager model
is given the same FLOPs, and its own precision's weight bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.backends import SPECS
from benchmarks.costs import STAGES, Cost, at_batch, bucket_costs, eager_costs, floor_ms
from benchmarks.eager import EagerBackend
from runtime import Pipeline


@pytest.fixture(scope="module")
def pipe(build: Path) -> Pipeline:
    return Pipeline(build, "onnxruntime", "cpu", cuda_graph=False)


def test_bucket_costs_add_up_the_artifacts(pipe: Pipeline) -> None:
    bucket = pipe.bucket(2)
    costs = bucket_costs(bucket)
    assert tuple(costs) == STAGES
    (text,) = bucket.artifacts["text_encoder"]
    assert text.batch == 1  # the build's text encoder runs prompt by prompt
    assert costs["text_encoder"] == Cost(2 * text.flops, 2 * text.weight_bytes)
    dit = {a.budget: a for a in bucket.artifacts["dit"]}
    assert all(a.batch == 2 for a in dit.values())
    assert len(bucket.dit_calls) == 4  # ping-pong: one call per step
    assert costs["dit_steps"] == Cost(
        sum(dit[b].flops for _, b in bucket.dit_calls),
        sum(dit[b].weight_bytes for _, b in bucket.dit_calls),
    )
    (decoder,), (stereo,) = bucket.artifacts["vae_decoder"], bucket.artifacts["stereo"]
    assert costs["vae_decoder"] == Cost(decoder.flops, decoder.weight_bytes)
    assert costs["e2e_stereo"] == costs["e2e_mono"] + Cost(stereo.flops, stereo.weight_bytes)
    # Every op is per take: the batch-2 bucket does twice the batch-1 bucket's arithmetic.
    one = bucket_costs(pipe.bucket(1))
    assert all(costs[n].flops == 2 * one[n].flops for n in STAGES)


def test_eager_costs_are_the_buckets_work(pipe: Pipeline) -> None:
    bucket = pipe.bucket(1)
    engines = bucket_costs(bucket)
    same = eager_costs(bucket, lambda art: art.weight_bytes)
    assert same == engines  # batch 1, weights at the build's precision: nothing differs
    halved = eager_costs(bucket, lambda art: art.weight_bytes // 2)
    assert all(halved[n].flops == engines[n].flops for n in STAGES)
    assert halved["vae_decoder"].weight_bytes == engines["vae_decoder"].weight_bytes // 2
    at_3 = at_batch(same, 1, 3)
    assert at_3["dit_steps"] == Cost(3 * engines["dit_steps"].flops, same["dit_steps"].weight_bytes)


def test_eager_bf16_reads_its_own_precisions_bytes(build: Path) -> None:
    """The fp32 build's weight bytes for eager-fp32; export.forward_cost's bf16 ones for eager-bf16."""
    import export
    from presto_ref.presets import get_preset

    def costs(spec: str, batch: int) -> dict[str, Cost]:
        backend = EagerBackend(SPECS[spec], build, "cpu", None, 0)
        with backend.running():
            return backend.stages(batch, 11).costs

    costs32, costs16 = costs("eager-fp32", 1), costs("eager-bf16", 1)
    assert all(costs32[n].flops == costs16[n].flops for n in STAGES)
    assert costs("eager-bf16", 3)["dit_steps"] == Cost(
        3 * costs16["dit_steps"].flops, costs16["dit_steps"].weight_bytes
    )
    decoder = export.forward_cost(get_preset("tiny"), "vae_decoder", 1, 11, None, "bf16")
    assert costs16["vae_decoder"].weight_bytes == decoder.weight_bytes
    assert costs16["vae_decoder"].weight_bytes * 2 == costs32["vae_decoder"].weight_bytes
    # The mono-to-stereo model keeps its mel bases in fp32: less than half as many bytes saved.
    assert costs16["stereo"].weight_bytes * 2 > costs32["stereo"].weight_bytes


def test_floor_is_the_larger_term() -> None:
    roof = {"matmul_gflops": 1000.0, "copy_gbps": 100.0}  # 1 TFLOP/s, 100 GB/s
    assert floor_ms(Cost(10**12, 0), roof) == pytest.approx(1000.0)  # compute bound
    assert floor_ms(Cost(10**9, 10**9), roof) == pytest.approx(10.0)  # memory bound: 1 GB
