"""What each timed stage costs, read from the build's manifest, and the roofline floor it implies.

Export records per artifact the cost of one call: `Artifact.flops` (2 x multiply-accumulates of
matmuls, convolutions and attention) and `Artifact.weight_bytes` (bytes of the weights the call
reads, at the artifact's precision). A stage of a `runtime.Bucket` costs the sum over the engine
calls it makes:

    text_encoder  B calls of the batch-1 encoder (one per prompt; the build's usual), else one call
    dit_steps     one call per entry of `Bucket.dit_calls`, at that budget's artifact
    vae_decoder, stereo   one call each
    e2e_mono = text_encoder + dit_steps + vae_decoder;   e2e_stereo = e2e_mono + stereo

The eager model does the same work: `eager_costs` takes a built bucket's FLOPs per take times B
(every op is per take, so FLOPs are linear in B), and counts the weights once per model call at
any B (the text encoder takes all prompts at once; the DiT runs once per `Bucket.evaluations`
entry), at the eager precision: the artifact's `weight_bytes` when the precisions agree, else
`export.forward_cost` at the eager precision (the counter that wrote the manifest).

floor_ms = max(FLOPs / the measured dense matmul rate, weight bytes / the measured copy bandwidth).
Activations are not counted, so the memory term is a lower bound too; it binds where a stage does
little arithmetic per weight (the text encoder at small batches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime import Artifact, Bucket

STAGES = ("text_encoder", "dit_steps", "vae_decoder", "stereo", "e2e_mono", "e2e_stereo")


@dataclass(frozen=True)
class Cost:
    """The work of one stage call: FLOPs and the bytes of weights read."""

    flops: int
    weight_bytes: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.weight_bytes + other.weight_bytes)


def _of(art: Artifact, calls: int = 1) -> Cost:
    return Cost(calls * art.flops, calls * art.weight_bytes)


def _with_e2e(text: Cost, dit: Cost, decoder: Cost, stereo: Cost) -> dict[str, Cost]:
    mono = text + dit + decoder
    return {
        "text_encoder": text,
        "dit_steps": dit,
        "vae_decoder": decoder,
        "stereo": stereo,
        "e2e_mono": mono,
        "e2e_stereo": mono + stereo,
    }


def bucket_costs(bucket: Bucket) -> dict[str, Cost]:
    """Per stage, the cost of one run of a stereo bucket's engines (rules in the module docstring)."""
    arts = bucket.artifacts
    (text,) = arts["text_encoder"]
    dit = {a.budget: a for a in arts["dit"]}
    return _with_e2e(
        _of(text, bucket.batch // text.batch),
        sum((_of(dit[b]) for _, b in bucket.dit_calls), Cost(0, 0)),
        _of(arts["vae_decoder"][0]),
        _of(arts["stereo"][0]),
    )


def eager_costs(bucket: Bucket, weight_bytes: Callable[[Artifact], int]) -> dict[str, Cost]:
    """Per stage, the cost of the eager model doing `bucket`'s work (at bucket.batch): the bucket's
    FLOPs, and each model call reading weight_bytes(artifact) once."""
    arts = bucket.artifacts
    dit = {a.budget: a for a in arts["dit"]}
    flops = bucket_costs(bucket)
    weights = _with_e2e(
        Cost(0, weight_bytes(arts["text_encoder"][0])),
        Cost(0, sum(weight_bytes(dit[b]) for _, b in bucket.evaluations)),
        Cost(0, weight_bytes(arts["vae_decoder"][0])),
        Cost(0, weight_bytes(arts["stereo"][0])),
    )
    return {name: Cost(flops[name].flops, weights[name].weight_bytes) for name in STAGES}


def at_batch(costs: dict[str, Cost], from_batch: int, batch: int) -> dict[str, Cost]:
    """Eager costs measured at `from_batch` takes, at `batch`: FLOPs scale, weights read once."""
    return {n: Cost(c.flops * batch // from_batch, c.weight_bytes) for n, c in costs.items()}


def floor_ms(cost: Cost, roofline: dict[str, Any]) -> float:
    """The roofline floor of one call in ms: the larger of its compute and memory terms."""
    compute_ms = cost.flops / (roofline["matmul_gflops"] * 1e9) * 1e3
    memory_ms = cost.weight_bytes / (roofline["copy_gbps"] * 1e9) * 1e3
    return max(compute_ms, memory_ms)
