"""benchmarks: how fast the built engines and the eager reference run, on the machine at hand.

    python -m benchmarks.latency     per-stage and end-to-end latency, RTF, FLOPs and roofline floor
                                     of several backends side by side, at batch 1 and the largest
                                     batch; JSON out, and a regression gate against a baseline
    python -m benchmarks.profile     where each stage's GPU time goes, by kernel class
    python -m benchmarks.reference   the eager model's stages, memory and hidden-state variance
    python -m benchmarks.microbench  kernel-level measurements at a preset's shapes
    python -m benchmarks.serve       closed-loop load test of a running `python -m runtime.serve`:
                                     latency percentiles, throughput, errors, GPU memory

Engines are run through the runtime's public API (`runtime.Pipeline` and its buckets), the eager
baselines are presto_ref's own model, and every stage's cost comes from the build's manifest.
Baselines live in benchmarks/baselines/.
"""
