"""The runtime on CUDA: graph replay equals the uncaptured chain, threads equal one at a time.

    python -m pytest -q -rs -m gpu tests/gpu/test_runtime_gpu.py

On the session's builds (conftest.py: the small preset's CUDA torch packages). Every comparison is
bit for bit. A replayed CUDA graph launches the very kernels that the uncaptured chain launches, on
the same values, so any difference at all is a bug: an input not copied into the graph's buffers, a
buffer read before it was written, an output aliased by the next request. The paper-scale bf16 and
fp32 packages measured 0.0 on every one of these comparisons on the H100.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from runtime import Pipeline

pytestmark = pytest.mark.gpu

PROMPTS = (
    "warm lofi hip hop with piano and vinyl crackle",
    "fast drum and bass with a rolling reese bass",
)
BPM = 120.0


def generate(pipe: Pipeline, prompt: str, seed: int, duration_s: float) -> np.ndarray:
    return pipe.generate([prompt], seeds=[seed], bpm=BPM, duration_s=duration_s).samples


@pytest.mark.parametrize("precision", ("fp32", "bf16"))
def test_cuda_graph_replay_equals_the_uncaptured_chain(gpu_builds, precision: str) -> None:
    build = gpu_builds[precision]
    graph = Pipeline(build.folder, backend="torch", device="cuda", cuda_graph=True)
    plain = Pipeline(build.folder, backend="torch", device="cuda", cuda_graph=False)
    d = build.duration_s
    first = generate(graph, PROMPTS[0], 0, d)  # warm-up, capture, first replay
    other = generate(graph, PROMPTS[1], 1, d)  # every input buffer overwritten in between
    again = generate(graph, PROMPTS[0], 0, d)
    uncaptured = generate(plain, PROMPTS[0], 0, d)
    assert graph.bucket(1, duration_s=d).captured, "the graph pipeline did not capture a graph"
    assert not np.array_equal(other, first), "another prompt and seed gave the same audio"
    np.testing.assert_array_equal(again, first, err_msg=f"{precision}: replay twice")
    np.testing.assert_array_equal(first, uncaptured, err_msg=f"{precision}: replay vs uncaptured")
    np.testing.assert_array_equal(
        generate(plain, PROMPTS[0], 0, d), uncaptured, err_msg=f"{precision}: uncaptured twice"
    )


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="needs two CUDA GPUs (a server's instance on cuda:1 in a process whose current is cuda:0)",
)
def test_a_pipeline_on_the_second_gpu_captures_its_own_chain(gpu_builds) -> None:
    # torch.cuda.graph captures on the current device's stream; runtime/graphs.py makes the
    # inputs' GPU current, or the chain on cuda:1 runs outside the capture and every replay
    # returns the capture run's audio.
    build = gpu_builds["bf16"]
    d = build.duration_s
    assert torch.cuda.current_device() == 0
    graph = Pipeline(build.folder, backend="torch", device="cuda:1", cuda_graph=True)
    plain = Pipeline(build.folder, backend="torch", device="cuda:1", cuda_graph=False)
    assert torch.cuda.current_device() == 0, "loading packages on cuda:1 left it current"
    first = generate(graph, PROMPTS[0], 0, d)  # capture, first replay
    other = generate(graph, PROMPTS[1], 1, d)
    assert graph.bucket(1, duration_s=d).captured
    assert not np.array_equal(other, first), "the replay on cuda:1 ignored its inputs"
    np.testing.assert_array_equal(first, generate(plain, PROMPTS[0], 0, d))
    np.testing.assert_array_equal(other, generate(plain, PROMPTS[1], 1, d))


def test_two_threads_generating_at_once_equal_one_at_a_time(gpu_builds) -> None:
    build = gpu_builds["bf16"]
    d = build.duration_s
    jobs = [[(PROMPTS[t], seed) for seed in range(t, 6, 2)] for t in range(2)]  # per thread
    alone = Pipeline(build.folder, backend="torch", device="cuda", cuda_graph=True)
    expected = [[generate(alone, p, s, d) for p, s in thread] for thread in jobs]

    # A fresh pipeline, so that the text cache fills, and the graph is captured, under contention.
    shared = Pipeline(build.folder, backend="torch", device="cuda", cuda_graph=True)
    results: list[list[np.ndarray]] = [[] for _ in jobs]
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def work(t: int) -> None:
        try:
            start.wait()
            for prompt, seed in jobs[t]:
                results[t].append(generate(shared, prompt, seed, d))
        except BaseException as err:  # noqa: BLE001  re-raised below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    for t, thread in enumerate(jobs):
        for (prompt, seed), got, want in zip(thread, results[t], expected[t]):
            np.testing.assert_array_equal(got, want, err_msg=f"{prompt!r}, seed {seed}")


def test_pinned_samples_equal_the_default_copy(gpu_builds) -> None:
    """generate_takes(pinned=True) copies each chunk's audio straight into page-locked samples:
    the same values as the default copy through the staging buffer, bit for bit, over two chunks
    (two takes in the batch-1 bucket)."""
    from runtime import Take

    build = gpu_builds["bf16"]
    pipe = Pipeline(build.folder, backend="torch", device="cuda")
    takes = [Take(PROMPTS[0], 0, BPM), Take(PROMPTS[1], 1, BPM, width=1.5)]
    default = pipe.generate_takes(takes, duration_s=build.duration_s).samples
    pinned = pipe.generate_takes(takes, duration_s=build.duration_s, pinned=True).samples
    assert torch.from_numpy(pinned).is_pinned() and not torch.from_numpy(default).is_pinned()
    np.testing.assert_array_equal(pinned, default)


def test_the_captured_text_encoder_equals_the_uncaptured_one(gpu_builds) -> None:
    """The batch-1 text encoder in its own CUDA graph (runtime/text_encoding.py): new prompts after
    the capture give the uncaptured encoder's tokens, bit for bit, and release_graphs drops it."""
    build = gpu_builds["bf16"]
    graph = Pipeline(build.folder, backend="torch", device="cuda", cuda_graph=True)
    plain = Pipeline(build.folder, backend="torch", device="cuda", cuda_graph=False)
    prompts = [*PROMPTS, "a third prompt, longer than the others, with more bytes in it"]
    for prompt in prompts:  # the first captures; each later one replays with new inputs
        got, got_mask = graph.encode_text([prompt])
        want, want_mask = plain.encode_text([prompt])
        assert torch.equal(got, want) and torch.equal(got_mask, want_mask), prompt
    assert graph.release_graphs() == 1 and plain.release_graphs() == 0
