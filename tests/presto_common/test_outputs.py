"""The up-front checks of the generate CLIs: `python -m pytest tests/presto_common/test_outputs.py`.

Each bad flag of the "safety" issue exits 1 with one `error:` line naming the value, before any
model or engine is loaded, and leaves the output folder as it was.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from presto_common import cli
from presto_common.errors import InputError, OutputError
from presto_ref.generate import main as ref_main

FAST = ["--preset", "tiny", "--duration-s", "0.5"]


def one_error(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


# --- presto_common.cli checks


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_are_checked_for_form(name: str) -> None:
    if name == "cpu":
        assert cli.check_device(name) == "cpu"
    else:  # well formed; refused only when that CUDA device is missing
        import torch

        index = int(name.partition(":")[2] or 0)
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            assert cli.check_device(name) == name
        else:
            with pytest.raises(InputError, match="CUDA device"):
                cli.check_device(name)


@pytest.mark.parametrize("name", ["banana", "", "CPU", "cuda:", "cuda:-1", "cuda:0 ", "tpu"])
def test_bad_device_names(name: str) -> None:
    with pytest.raises(InputError, match="expected cpu, cuda or cuda:N"):
        cli.check_device(name)


@pytest.mark.parametrize("width", [0.0, 1.0, 4.0])
def test_width_in_range(width: float) -> None:
    assert cli.check_width(width) == width


@pytest.mark.parametrize("width", [-0.1, 4.01, 1e30, float("nan"), float("inf")])
def test_width_out_of_range(width: float) -> None:
    with pytest.raises(InputError, match=r"outside \[0, 4\]"):
        cli.check_width(width)


@pytest.mark.parametrize(
    ("seed", "num_takes", "ok"),
    [(0, 1, True), (2**63 - 1, 1, True), (2**63 - 2, 2, True), (-1, 1, False),
     (2**63, 1, False), (2**63 - 1, 2, False), (10**23, 1, False)],
)  # fmt: skip
def test_seed_range(seed: int, num_takes: int, ok: bool) -> None:
    if ok:
        cli.check_seeds(seed, num_takes)
    else:
        with pytest.raises(InputError, match=r"outside \[0, 2\*\*63 - 1\]"):
            cli.check_seeds(seed, num_takes)


def test_output_checks(tmp_path: Path) -> None:
    cli.check_output(tmp_path / "out.wav")
    cli.check_output(tmp_path / "OUT.WAV")
    with pytest.raises(OutputError, match="is a folder"):
        cli.check_output(tmp_path)
    (tmp_path / "d.wav").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        cli.check_output(tmp_path / "d.wav")
    with pytest.raises(OutputError, match=r"ends in '\.mp3'; name it out\.wav"):
        cli.check_output(tmp_path / "out.mp3")
    with pytest.raises(OutputError, match=r"has no extension; name it out\.wav"):
        cli.check_output(tmp_path / "out")
    with pytest.raises(OutputError, match="does not exist"):
        cli.check_output(tmp_path / "no" / "out.wav")
    with pytest.raises(OutputError, match="not a usable path"):
        cli.check_output(tmp_path / ("x" * 300 + ".wav"))
    with pytest.raises(OutputError, match="inside the build folder"):
        cli.check_output(tmp_path / "build" / "manifest.wav", forbidden_dir=tmp_path / "build")
    with pytest.raises(OutputError, match="inside the build folder"):  # through a '..'
        cli.check_output(
            tmp_path / "build" / "x" / ".." / "a.wav", forbidden_dir=tmp_path / "build"
        )
    cli.check_output(tmp_path / "a.wav", forbidden_dir=tmp_path / "build")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.wav"]  # the probe left nothing


def test_unwritable_folder_is_refused(tmp_path: Path, monkeypatch) -> None:
    # Root writes into a chmod 555 folder, so the probe is made to fail the way the write would.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(OutputError, match="is not writable"):
        cli.check_output(tmp_path / "out.wav")
    with pytest.raises(OutputError, match="is not writable"):
        cli.check_json_output(tmp_path / "r.json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="is not writable"):
            cli.check_output(folder / "out.wav")
    finally:
        folder.chmod(0o755)


def test_json_output_checks(tmp_path: Path) -> None:
    cli.check_json_output(tmp_path / "r.json")
    with pytest.raises(OutputError, match="is a folder"):
        cli.check_json_output(tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        cli.check_json_output(tmp_path / "no" / "r.json")


# --- presto_ref.generate: each case of the issue, refused before loading


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seed", "99999999999999999999999"], r"--seed 99999999999999999999999 is outside"),
        (["--seed", "-1"], r"--seed -1 is outside \[0, 2\*\*63 - 1\]"),
        (["--seed", str(2**63 - 2), "--num-takes", "3"], r"seed \+ num_takes - 1"),
        (["--device", "banana"], "--device 'banana' is not a device name"),
        (["--width", "1e30"], r"--width 1e\+30 is outside \[0, 4\]"),
        (["--width", "-1"], r"--width -1.0 is outside \[0, 4\]"),
        (["--num-takes", "100000000"], r"--num-takes 100000000 needs about .* GiB"),
    ],
)
def test_reference_refuses_bad_flags_up_front(
    tmp_path: Path, capsys, monkeypatch, extra, message
) -> None:
    # Loading a model would fail the test: every check must come first.
    monkeypatch.setattr("presto_ref.generate.random_model", lambda *a: pytest.fail("loaded"))
    assert ref_main(["x", "-o", str(tmp_path / "out.wav"), *FAST, *extra]) == 1
    assert re.search(message, one_error(capsys))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("out.mp3", r"ends in '\.mp3'; name it out\.wav"),
        ("out", r"has no extension; name it out\.wav"),
        (".", "is a folder"),
        ("no/out.wav", "does not exist"),
    ],
)
def test_reference_refuses_bad_outputs_up_front(
    tmp_path: Path, capsys, monkeypatch, name, message
) -> None:
    monkeypatch.setattr("presto_ref.generate.random_model", lambda *a: pytest.fail("loaded"))
    assert ref_main(["x", "-o", str(tmp_path / name), *FAST]) == 1
    assert re.search(message, one_error(capsys))
    assert list(tmp_path.iterdir()) == []


def test_reference_refuses_a_take_path_that_is_a_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "take_1.wav").mkdir()
    assert ref_main(["x", "-o", str(tmp_path / "take.wav"), *FAST, "--num-takes", "2"]) == 1
    assert "take_1.wav is a folder" in one_error(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["take_1.wav"]


def test_memory_estimate_grows_with_takes_and_duration() -> None:
    from presto_ref.generate import bytes_per_take
    from presto_ref.presets import get_preset

    config = get_preset("presto-ls")
    one_s, two_s = (config.frames_for_duration(d) for d in (1.0, 2.0))
    assert bytes_per_take(config, two_s, True, 4) > bytes_per_take(config, one_s, True, 4)
    assert bytes_per_take(config, one_s, True, 4) >= bytes_per_take(config, one_s, False, 4)
    # 32 s of stereo at fp32: the decoder's last stage alone (96 channels x 1.4 M samples x 4 B)
    # is 0.54 GB, so 100000 takes can never fit.
    assert bytes_per_take(config, config.max_frames, True, 4) > 1e9


def test_memory_check_refuses_a_batch_and_warns_for_one_take(monkeypatch, caplog) -> None:
    import torch

    from presto_ref import generate
    from presto_ref.presets import get_preset

    config = get_preset("tiny")
    frames = config.frames_for_duration(5.0)
    per_take = generate.bytes_per_take(config, frames, True, 4)
    monkeypatch.setattr(generate, "available_bytes", lambda device: per_take * 3 // 2)
    rest = (frames, True, 0, torch.float32, torch.device("cpu"))  # stereo, no weights
    generate.check_memory(config, 1, *rest)  # fits
    with pytest.raises(
        InputError, match="--num-takes 2 needs about .*; ask for at most --num-takes 1"
    ):
        generate.check_memory(config, 2, *rest)
    monkeypatch.setattr(generate, "available_bytes", lambda device: per_take // 2)
    with caplog.at_level("WARNING", logger="presto_ref.generate"):
        generate.check_memory(config, 1, *rest)  # one take: a warning, not a refusal
    assert "one take of 5.01 s may need about" in caplog.text
    with pytest.raises(InputError, match="shorter --duration-s or a smaller --preset"):
        generate.check_memory(config, 2, *rest)


def test_default_preset_says_what_it_costs(tmp_path: Path, capsys, monkeypatch) -> None:
    class Stop(Exception):
        pass

    def stop(*args):
        raise Stop

    monkeypatch.setattr("presto_ref.generate.random_model", stop)
    with pytest.raises(Stop):  # stopped at the load, after the INFO line
        ref_main(["x", "-o", str(tmp_path / "out.wav"), "--duration-s", "0.5"])
    text = capsys.readouterr().err  # setup_logging replaces caplog's handler; read stderr
    assert re.search(r"loading preset presto-ls \(865 M parameters\) on cpu; .*minutes", text)
    assert "--preset tiny" in text


def test_reference_logs_before_the_decode(tmp_path: Path, capsys) -> None:
    assert ref_main(["x", "-o", str(tmp_path / "out.wav"), *FAST]) == 0
    text = capsys.readouterr().err
    assert re.search(r"decoding 0\.50 s of stereo audio for 1 take", text)


# --- runtime.generate: the same checks, before any engine is loaded


@pytest.fixture
def fake_build(tmp_path: Path, monkeypatch) -> Path:
    """A folder standing in for a build: the checks must refuse before Pipeline opens it."""
    build = tmp_path / "build"
    build.mkdir()
    (build / "manifest.json").write_text('{"kept": true}\n')
    monkeypatch.setattr("runtime.generate.Pipeline", lambda *a, **k: pytest.fail("loaded"))
    return build


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("build/manifest.json", [], r"ends in '\.json'; name it manifest\.wav"),
        (
            "build/manifest.wav",
            [],
            "inside the build folder .*build, which this command only reads",
        ),
        ("build/sub/../out.wav", [], "inside the build folder"),
        ("build", [], "is a folder"),
        ("out.wav", ["--seed", "-1"], r"--seed -1 is outside \[0, 2\*\*63 - 1\]"),
        ("out.wav", ["--seed", "99999999999999999999999"], "outside"),
        ("out.wav", ["--device", "banana"], "--device 'banana' is not a device name"),
        ("out.wav", ["--width", "1e30"], r"--width 1e\+30 is outside \[0, 4\]"),
        ("out.mp3", [], r"ends in '\.mp3'; name it out\.wav"),
    ],
)
def test_runtime_refuses_up_front(
    fake_build: Path, capsys, name: str, extra: list[str], message: str
) -> None:
    from runtime.generate import main

    folder = fake_build.parent
    before = sorted(str(p) for p in folder.rglob("*"))
    argv = ["x", "--engines", str(fake_build), "-o", str(folder / name), *extra]
    assert main(argv) == 1
    assert re.search(message, one_error(capsys))
    assert sorted(str(p) for p in folder.rglob("*")) == before
    assert (fake_build / "manifest.json").read_text() == '{"kept": true}\n'
