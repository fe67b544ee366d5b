"""Property tests of the CLIs' argument handling: `python -m pytest tests/test_cli_properties.py`.

Each CLI's `main(argv)` gets arbitrary strings, numbers and paths for its flags. Whatever they are,
it exits 0, 1 (a PrestoError as one line) or 2 (an argparse usage error), never with an uncaught
exception, and leaves no partial file; a failed run writes no WAV and never touches the build
folder it reads. The strategies mostly draw values that fail validation early, and the few that
pass generate under a second of audio with the tiny preset, so the file runs in about a minute.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from presto_common.errors import InputError

# Function-scoped fixtures (monkeypatch) are reset per test, not per example: each example makes
# its own output folder, and the stubs they install are the same for every example.
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

BUILD_DURATION_S = "0.5"  # the one duration bucket of the tiny build


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory) -> Path:
    """A tiny ONNX build with one 0.5 s bucket at batch 1, made once per session."""
    from export.build import main as build_main

    out = tmp_path_factory.mktemp("props") / "tiny"
    args = ["--preset", "tiny", "--backends", "onnx", "--durations-s", BUILD_DURATION_S]
    assert build_main([*args, "--no-verify", "--out", str(out), "-q"]) == 0
    return out


# --- strategies: a few valid values among many invalid ones


def numbers(valid: st.SearchStrategy, *, integer: bool = False) -> st.SearchStrategy[str]:
    """A flag's value as text: mostly one of `valid` (so that runs get past argparse to the
    CLI's own checks), else any huge int, any float (unless `integer`), or arbitrary text."""
    chosen = valid.map(str)
    others = [
        st.integers(min_value=-(2**80), max_value=2**80).map(str),
        st.text(max_size=8),
    ]
    if not integer:
        others.append(st.floats(allow_nan=True, allow_infinity=True).map(str))
    return st.one_of(chosen, chosen, chosen, chosen, *others)


PROMPTS = st.one_of(st.sampled_from(["lofi piano", "", "x" * 200]), st.text(max_size=30))
SEEDS = numbers(st.sampled_from([0, 7, -1, 2**63 - 1, 2**63]), integer=True)
BPMS = numbers(st.sampled_from([120.0, 40.0, 10.0, 500.0]))


def quick_num_takes(text: str) -> bool:
    """False for a --num-takes from 3 to 10**8 - 1: runtime.generate runs any count that fits in
    memory (in the build's batch buckets), valid but too slow for a property run; from 10**8 on,
    every machine's memory check refuses it at once."""
    try:
        return not 3 <= int(text) < 10**8
    except ValueError:
        return True


NUM_TAKES = numbers(st.sampled_from([1, 2, 0, -3, 10**8, 10**12]), integer=True).filter(
    quick_num_takes
)
WIDTHS = numbers(st.sampled_from([1.0, 0.0, 4.0, -1.0, 1e30]))
DEVICES = st.one_of(
    st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:7", "banana", "", "CPU", "cuda:x"]),
    st.text(max_size=10),
)
# Relative to the example's output folder; "BUILD/" names a path in the build folder.
OUTPUTS = st.one_of(
    st.sampled_from(
        ["out.wav", "out.WAV", "out.mp3", "out", "out.flac", ".", "", "no/out.wav", "d.wav",
         "BUILD/manifest.json", "BUILD/out.wav", "BUILD/../BUILD/x.wav", "x" * 300 + ".wav"]
    ),
    st.text(max_size=20).map(lambda s: s + ".wav"),
    st.text(max_size=20),
)  # fmt: skip


def optional(flag: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """[flag, value] or nothing; the value joined with '=' so a leading '-' stays a value."""
    return st.one_of(st.just([]), values.map(lambda v: [f"{flag}={v}"]))


def request_flags(durations: st.SearchStrategy) -> st.SearchStrategy[list[str]]:
    """The shared request flags, each present or not, in a fixed order."""
    return st.tuples(
        optional("--seed", SEEDS),
        optional("--bpm", BPMS),
        optional("--duration-s", numbers(durations)),
        optional("--num-takes", NUM_TAKES),
        optional("--width", WIDTHS),
        optional("--device", DEVICES),
    ).map(lambda parts: [a for part in parts for a in part])


def exit_code(main, argv: list[str]) -> int:
    """main(argv)'s exit code, with argparse's SystemExit counted as its code (2 for usage)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return 2 if stop.code is None else int(stop.code)


def output_path(folder: Path, name: str, build: Path | None) -> str:
    if name.startswith("BUILD/"):
        assert build is not None
        return str(build / name.removeprefix("BUILD/"))
    return str(folder / name) if name else ""


def listing(folder: Path) -> dict[str, float]:
    """Every file under `folder` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


def assert_clean(code: int, folder: Path, before: set[str]) -> None:
    """Exit 0/1/2; no partial file; after a failure, no new WAV."""
    event(f"exit {code}")  # --hypothesis-show-statistics shows how many got how far
    assert code in (0, 1, 2), code
    names = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    assert not [n for n in names if n.endswith(".partial") or ".presto-write-check-" in n], names
    if code != 0:
        assert not [n for n in names - before if n.lower().endswith(".wav")], names - before


def example_folder(base: Path) -> Path:
    """A fresh output folder holding a folder named d.wav (an -o that is a folder)."""
    folder = Path(tempfile.mkdtemp(dir=base))
    (folder / "d.wav").mkdir()
    return folder


# --- the two generate CLIs


@SETTINGS
@given(
    prompt=PROMPTS,
    flags=request_flags(st.sampled_from([0.05, 0.3, 0.0, -1.0, 11.0])),
    output=OUTPUTS,
)
def test_reference_generate(tmp_path: Path, prompt: str, flags: list[str], output: str) -> None:
    from presto_ref.generate import main

    folder = example_folder(tmp_path)
    before = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    if output.startswith("BUILD/"):  # no build folder here: an ordinary subfolder
        output = output.removeprefix("BUILD/")
    argv = [prompt, "-o", output_path(folder, output, None), "--preset", "tiny", *flags]
    assert_clean(exit_code(main, argv), folder, before)


@SETTINGS
@given(
    prompt=PROMPTS,
    flags=request_flags(st.sampled_from([float(BUILD_DURATION_S), 0.0, -1.0, 3.0])),
    output=OUTPUTS,
)
def test_runtime_generate(
    tiny_build: Path, tmp_path: Path, prompt: str, flags: list[str], output: str
) -> None:
    from runtime.generate import main

    folder = example_folder(tmp_path)
    before = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    build_before = listing(tiny_build)
    argv = [prompt, "--engines", str(tiny_build), "--backend", "onnxruntime"]
    argv += ["-o", output_path(folder, output, tiny_build), *flags]
    assert_clean(exit_code(main, argv), folder, before)
    assert listing(tiny_build) == build_before  # the build folder read is never written


# --- argument parsing of export.build and benchmarks.latency (the work itself is stubbed out)


class Reached(InputError):
    """Raised by a stub where the real CLI would start building or timing."""


def reached(*args, **kwargs):
    raise Reached("validation passed; stopped before the work")


@SETTINGS
@given(
    flags=st.tuples(
        optional("--preset", st.one_of(st.sampled_from(["tiny", "huge", ""]), st.text(max_size=8))),
        optional("--backends", st.one_of(st.sampled_from(["onnx", "torch", "x"]), st.text(max_size=8))),
        optional("--batch-sizes", numbers(st.sampled_from(["1", "1,4", "0", "a,b"]))),
        optional("--durations-s", numbers(st.sampled_from(["0.5", "1,2", "-1"]))),
        optional("--precision", st.sampled_from(["fp32", "fp16", "bf16", "int3", ""])),
        optional("--device", DEVICES),
        optional("--init-seed", SEEDS),
    ),
    out=st.one_of(st.sampled_from(["build", "", ".", "d.wav"]), st.text(max_size=12)),
)  # fmt: skip
def test_export_build_arguments(
    tmp_path: Path, monkeypatch, flags: tuple[list[str], ...], out: str
) -> None:
    import export.build

    monkeypatch.setattr(export.build, "build_folder", reached)
    folder = example_folder(tmp_path)
    before = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    argv = [a for part in flags for a in part] + [f"--out={folder / out}", "-q"]
    assert_clean(exit_code(export.build.main, argv), folder, before)


@SETTINGS
@given(
    flags=st.tuples(
        optional("--runs", numbers(st.sampled_from([2, 1, 0]), integer=True)),
        optional("--warmup", numbers(st.sampled_from([0, -1]), integer=True)),
        optional("--backends", st.one_of(st.sampled_from(["engines", "eager-fp32", "x"]), st.text())),
        optional("--device", DEVICES),
        optional("--batch-sizes", numbers(st.sampled_from(["1", "1,4", "0"]))),
        optional("--threshold-sigmas", numbers(st.sampled_from([3.0]))),
    ),
    preset=st.booleans(),
    json_name=st.one_of(st.just(None), OUTPUTS),
)  # fmt: skip
def test_benchmarks_latency_arguments(
    tmp_path: Path, monkeypatch, flags: tuple[list[str], ...], preset: bool, json_name: str | None
) -> None:
    import benchmarks.latency

    monkeypatch.setattr(benchmarks.latency, "run_benchmark", reached)
    monkeypatch.setattr(benchmarks.latency, "build_for", reached)
    folder = example_folder(tmp_path)
    before = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    argv = [a for part in flags for a in part]
    argv += ["--preset=tiny"] if preset else [f"--engines={folder / 'engines'}"]
    if json_name is not None:
        argv.append(f"--json={output_path(folder, json_name.removeprefix('BUILD/'), None)}")
    code = exit_code(benchmarks.latency.main, [*argv, "-q"])
    assert_clean(code, folder, before)
    assert code != 0  # the stubs never let a run finish
    assert not [p for p in folder.rglob("*.tmp")]
