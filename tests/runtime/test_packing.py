"""Takes packed into a build's batch buckets (`runtime.packing`, `Pipeline.generate_takes`).

Run: `python -m pytest tests/runtime/test_packing.py`.

Uses the tiny build of tests/runtime/conftest.py (ONNX Runtime on CPU, batches 1 and 2, 1 s).
"""

from __future__ import annotations

import doctest
import itertools
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from presto_common.errors import InputError, ShapeError
from runtime import Pipeline, Take, packing
from runtime import generate as runtime_generate
from runtime.generate import main as generate_main
from runtime.packing import pack, plan

DURATION_S = 1.0  # 46 frames, the build's one duration

# ORT's CPU provider in fp32 runs the same graphs at batch 1 and 2; a take's rows differ only where
# its kernels sum in another order (float reassociation): measured 5.0e-6 to 5.4e-6 max abs on
# the takes below (audio peaking near 1.0-1.6), 8.7e-6 at worst over 20 takes. 2e-4 is 20-40x
# that, and far below what a wrong seed, BPM, width or row order gives (differences of order 1).
ATOL = 2e-4


# --- plan and pack, pure ---


def best(n: int, batches: list[int]) -> tuple[int, int]:
    """(rows, calls) of the best plan by brute force: fewest rows >= n, then fewest calls."""
    top = max(batches)
    for rows in range(n, n + top):
        for calls in range(-(-rows // top), rows + 1):  # fewer calls cannot reach `rows`
            if any(sum(c) == rows for c in itertools.combinations_with_replacement(batches, calls)):
                return rows, calls
    raise AssertionError("no plan")


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 40),
    batches=st.lists(st.integers(1, 9), min_size=1, max_size=4, unique=True),
)
def test_plan_covers_n_with_least_padding(n: int, batches: list[int]) -> None:
    chunks = plan(n, batches)
    assert set(chunks) <= set(batches)
    assert chunks == sorted(chunks, reverse=True)  # largest first
    assert n <= sum(chunks) < n + min(batches)  # covers N; padding < the smallest batch
    assert sum(chunks) - n < chunks[-1]  # the last chunk holds a real take
    assert (sum(chunks), len(chunks)) == best(n, batches)  # fewest rows, then fewest calls


def test_plan_examples_and_large_n() -> None:
    assert plan(3, [1, 2]) == [2, 1] and plan(1, [1, 2]) == [1]
    assert plan(7, [4, 8]) == [8]  # one call, not (4, 4)
    assert plan(3, [1, 2, 64]) == [2, 1]  # not 61 padding rows in the 64 bucket
    assert plan(5, [2]) == [2, 2, 2]
    chunks = plan(10**6 + 1, [3, 64])  # the head of largest chunks is arithmetic, not a search
    assert 0 <= sum(chunks) - (10**6 + 1) < 3 and chunks.count(3) < 64


@pytest.mark.parametrize(
    ("n", "batches", "error", "message"),
    [(0, [1], InputError, "n=0"), (True, [1], InputError, "n=True"), (2, [], ShapeError, r"\[\]")],
)
def test_plan_refuses(n, batches, error, message) -> None:
    with pytest.raises(error, match=message):
        plan(n, batches)


def test_doctests() -> None:
    assert doctest.testmod(packing).failed == 0


def test_pack_pads_with_the_last_real_take() -> None:
    takes = [Take("a", 0), Take("b", 1), Take("c", 2)]
    assert pack(takes, [2, 2]) == [((takes[0], takes[1]), 2), ((takes[2], takes[2]), 1)]
    with pytest.raises(ShapeError, match="do not hold 3 takes"):
        pack(takes, [2])
    with pytest.raises(ShapeError, match="a real take in each"):
        pack(takes, [2, 2, 2])


# --- the pipeline ---


@pytest.fixture(scope="module")
def pipe(build: Path) -> Pipeline:
    return Pipeline(build, backend="onnxruntime", device="cpu")


@pytest.fixture(scope="module")
def batch2_only(build: Path, tmp_path_factory) -> Path:
    """A copy of the build whose only request bucket is batch 2 (its batch-1 text encoder kept)."""
    folder = shutil.copytree(build, tmp_path_factory.mktemp("b2") / "tiny")
    data = json.loads((folder / "manifest.json").read_text())
    data["artifacts"] = [
        a for a in data["artifacts"] if a["component"] == "text_encoder" or a["batch"] == 2
    ]
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


TAKES = [
    Take("warm lofi piano", 3, bpm=100.0),
    Take("a b", 7, bpm=140.0, width=0.5),
    Take("x", 11, bpm=60.0, width=2.0),
]


def alone(pipe: Pipeline, take: Take, **kw) -> np.ndarray:
    """`take` generated on its own: one batch-1 call."""
    return pipe.generate_takes([take], duration_s=DURATION_S, **kw).samples


def test_three_takes_equal_each_alone(pipe: Pipeline) -> None:
    # On batches (1, 2) three takes run as 2 + 1; each has its own prompt, seed, BPM and width.
    audio = pipe.generate_takes(TAKES, duration_s=DURATION_S)
    assert audio.samples.shape == (3, 2, 46 * 960) and audio.seeds == (3, 7, 11)
    for i, take in enumerate(TAKES):
        np.testing.assert_allclose(audio.samples[i : i + 1], alone(pipe, take), atol=ATOL)
    # The per-take BPM and width matter: the same seed at another BPM or width is another take.
    other = alone(pipe, Take("a b", 7, bpm=120.0, width=0.5))
    assert np.abs(other - audio.samples[1:2]).max() > 100 * ATOL
    mono = pipe.generate_takes(TAKES[:2], duration_s=DURATION_S, stereo=False).samples
    np.testing.assert_allclose(mono[1:], alone(pipe, TAKES[1], stereo=False), atol=ATOL)
    wide = alone(pipe, Take("a b", 7, bpm=140.0, width=1.0))
    assert np.abs(wide - audio.samples[1:2]).max() > 100 * ATOL


def test_padding_rows_are_dropped(pipe: Pipeline, batch2_only: Path) -> None:
    # Only batch 2 is built: three takes run as 2 + 2, the last padded with a copy of take 2.
    two = Pipeline(batch2_only, backend="onnxruntime", device="cpu")
    assert two.built_buckets() == [(2, 46)]
    audio = two.generate_takes(TAKES, duration_s=DURATION_S)
    assert audio.samples.shape[0] == 3
    for i, take in enumerate(TAKES):
        np.testing.assert_allclose(audio.samples[i : i + 1], alone(pipe, take), atol=ATOL)
    # generate keeps its signature: one bpm and width for all, numpy integer seeds accepted.
    same = two.generate(["x"], seeds=[np.int64(11)], bpm=60.0, width=2.0, duration_s=DURATION_S)
    np.testing.assert_allclose(same.samples, audio.samples[2:], atol=ATOL)


# --- checks before any work ---


@pytest.mark.parametrize(
    ("take", "message"),
    [
        (Take("", 0), "prompt 0 is '', which is empty; describe the music in words"),
        (Take("x" * 200, 0), r"prompt 0 is 200 UTF-8 bytes, but at most 127 fit \(max_tokens=128"),
        (Take(5, 0), "prompt 0 is 5; expected a string"),
        (Take("a", -1), r"seed=-1 must be an integer in \[0, 2\*\*63 - 1\]"),
        (Take("a", 2**63), r"seed=9223372036854775808 must be an integer in \[0, 2\*\*63 - 1\]"),
        (Take("a", True), r"seed=True must be an integer"),
        (Take("a", 1.0), r"seed=1.0 must be an integer"),
        (Take("a", 0, bpm=500.0), r"bpm=500.0 is outside \[40, 240\]; pass a BPM in that range"),
        (Take("a", 0, bpm=math.nan), r"bpm=nan is outside \[40, 240\]"),
        (Take("a", 0, bpm="fast"), "bpm='fast' must be a number, not str"),
        (Take("a", 0, width=5.0), r"--width 5.0 is outside \[0, 4\] \(1 is the model's stereo"),
        (Take("a", 0, width=math.nan), r"--width nan is outside \[0, 4\]"),
        (Take("a", 0, width=None), "width=None must be a number, not NoneType"),
        ("a", "take='a' must be a runtime.Take"),
    ],
)
def test_check_take_messages(pipe: Pipeline, take, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        pipe.check_take(take)
    assert "\n" not in str(info.value)


def test_check_take_normalises_and_generate_takes_checks_first(pipe: Pipeline) -> None:
    assert pipe.check_take(Take("a", 0, bpm=90, width=1)) == Take("a", 0, 90.0, 1.0)
    assert isinstance(pipe.check_take(Take("a", 0, bpm=90)).bpm, float)
    # A bad take anywhere refuses the request before any engine runs; a prompt names its index.
    with pytest.raises(InputError, match="prompt 2 is ''"):
        pipe.generate_takes([*TAKES[:2], Take("", 0)], duration_s=DURATION_S)
    with pytest.raises(InputError, match="non-empty sequence of runtime.Take"):
        pipe.generate_takes([], duration_s=DURATION_S)


def test_frames_for(pipe: Pipeline) -> None:
    assert pipe.frames_for(None) == 46 and pipe.frames_for(1.0) == 46
    with pytest.raises(InputError, match=r"duration_s=0.0 must be in \(0, 10\] s for tiny"):
        pipe.frames_for(0.0)
    with pytest.raises(InputError, match="duration_s='1' must be a number of seconds"):
        pipe.frames_for("1")
    with pytest.raises(
        ShapeError,
        match=r"duration_s=2 \(92 frames\) has no bucket at any batch in .*; the nearest built "
        r"duration is 1.00 s: ask for that, or rebuild with `python -m export.build --preset tiny "
        r".*--batch-sizes 1,2 --durations-s 2.00,1.00 ",
    ):
        pipe.frames_for(2.0)


# --- the text cache, warm-up and the CLI ---


def test_text_cache_is_a_bounded_lru(build: Path) -> None:
    small = Pipeline(build, backend="onnxruntime", device="cpu", text_cache_size=2)
    small.encode_text(["a"])
    small.encode_text(["b"])
    small.encode_text(["a"])  # a is now the most recent
    small.encode_text(["c"])  # evicts b, the least recently used
    assert small._text.cached_prompts == ["a", "c"]
    tokens, _ = small.encode_text(["b", "c", "a"])  # more prompts than the cache holds
    assert tokens.shape[0] == 3 and small._text.cached_prompts == ["c", "a"]
    with pytest.raises(InputError, match="text_cache_size=-1 must be >= 0"):
        Pipeline(build, device="cpu", text_cache_size=-1)


def test_warm_up_runs_every_bucket(build: Path) -> None:
    fresh = Pipeline(build, backend="onnxruntime", device="cpu")
    assert fresh.warm_up() == 4  # (1, 46) and (2, 46), stereo and mono
    assert fresh.warm_up(stereo=False) == 2
    assert len(fresh._buckets) == 4


def test_cli_num_takes_past_the_largest_batch(build: Path, tmp_path: Path) -> None:
    out = tmp_path / "take.wav"
    args = ["x", "--engines", str(build), "-o", str(out), "--duration-s", "1", "--float-wav"]
    assert generate_main([*args, "--num-takes", "3", "--seed", "5", "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"take_{i}.wav" for i in range(3)]
    data, sr = soundfile.read(str(tmp_path / "take_2.wav"))
    assert sr == 44_100 and data.shape == (46 * 960, 2)
    pipe = Pipeline(build, backend="onnxruntime", device="cpu")
    np.testing.assert_allclose(data.T[None], alone(pipe, Take("x", 7)), atol=ATOL)


def test_cli_refuses_takes_past_host_memory(build: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "take.wav"
    args = ["x", "--engines", str(build), "-o", str(out), "--duration-s", "1"]
    assert generate_main([*args, "--num-takes", str(10**12), "-q"]) == 1
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert re.search(
        r"--num-takes 1000000000000 needs about .* GiB of host memory for its audio "
        r"\(0.7 MiB per take of 1.00 s\), but .* GiB is free; ask for at most --num-takes \d+",
        error,
    ), error
    assert list(tmp_path.iterdir()) == []


def test_host_memory_check(monkeypatch, caplog) -> None:
    monkeypatch.setattr(runtime_generate, "host_available_bytes", lambda: 10 * 2**20)
    runtime_generate.check_host_memory(7, 2, 44_160, 44_100)  # 7 x 0.67 MiB fits in 10 MiB
    with pytest.raises(InputError, match="ask for at most --num-takes 14$"):
        runtime_generate.check_host_memory(15, 2, 44_160, 44_100)
    monkeypatch.setattr(runtime_generate, "host_available_bytes", lambda: 2**10)
    with pytest.raises(InputError, match="ask for a shorter --duration-s$"):
        runtime_generate.check_host_memory(1, 2, 44_160, 44_100)
    monkeypatch.setattr(runtime_generate, "host_available_bytes", lambda: None)
    runtime_generate.check_host_memory(10**12, 2, 44_160, 44_100)
    assert "free host memory unknown" in caplog.text
