"""Latency regression benchmarks (not yet implemented: see the benchmarks issue)."""
