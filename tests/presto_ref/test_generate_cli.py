"""The reference CLI: `python -m pytest tests/presto_ref/test_generate_cli.py`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from presto_ref.checkpoint import save_checkpoint
from presto_ref.generate import main

FAST = ["--preset", "tiny", "--duration-s", "0.5"]


def test_writes_stereo_16_bit_wav(tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    assert main(["lofi piano", "-o", str(out), *FAST]) == 0
    info = soundfile.info(str(out))
    assert (info.samplerate, info.channels, info.subtype) == (44_100, 2, "PCM_16")
    assert info.frames == 23 * 960  # 0.5 s rounds to 23 frames


def test_takes_mono_and_float(tmp_path: Path) -> None:
    out = tmp_path / "take.wav"
    assert (
        main(
            [
                "lofi piano",
                "-o",
                str(out),
                *FAST,
                "--num-takes",
                "3",
                "--mono",
                "--float-wav",
                "--seed",
                "4",
            ]
        )
        == 0
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["take_0.wav", "take_1.wav", "take_2.wav"]
    takes = [soundfile.read(str(tmp_path / n)) for n in names]
    assert all(sr == 44_100 and audio.ndim == 1 for audio, sr in takes)
    assert soundfile.info(str(tmp_path / names[0])).subtype == "FLOAT"
    # Take 1 has seed 5: the same audio as a single run with --seed 5.
    single = tmp_path / "single" / "s.wav"
    single.parent.mkdir()
    assert (
        main(["lofi piano", "-o", str(single), *FAST, "--mono", "--float-wav", "--seed", "5"]) == 0
    )
    np.testing.assert_allclose(soundfile.read(str(single))[0], takes[1][0], atol=1e-5)


def test_checkpoint_gives_the_same_audio_as_the_preset(tiny_model, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tiny_model, tmp_path / "ckpt")  # tiny_model is the seed-0 init
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    assert main(["x", "-o", str(a), *FAST, "--float-wav"]) == 0
    assert (
        main(["x", "-o", str(b), "--checkpoint", str(ckpt), "--duration-s", "0.5", "--float-wav"])
        == 0
    )
    assert np.array_equal(soundfile.read(str(a))[0], soundfile.read(str(b))[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["", *FAST], "empty"),
        (["x", *FAST, "--bpm", "500"], r"bpm=500.0 is outside \[40, 240\]"),
        (["x", "--preset", "tiny", "--duration-s", "0"], "duration_s=0.0 must be a positive"),
        (["x", "--preset", "tiny", "--duration-s", "-3"], "duration_s=-3.0 must be a positive"),
        (["x", "--preset", "tiny", "--duration-s", "11"], "exceeds the tiny maximum of 10 s"),
        (["x", "--preset", "huge"], "unknown preset 'huge'"),
        (["x", "--checkpoint", "/nonexistent/ckpt"], "config.json is missing"),
        (["x", *FAST, "--rho", "0.5"], "rho=0.5 must be >= 1"),
        (["x", *FAST, "--steps", "0"], "num_steps=0 must be >= 1"),
        (["x", *FAST, "--num-takes", "0"], "--num-takes=0 must be >= 1"),
        (["x", *FAST, "--cfg", "2"], r"cfg_scale=2.0 must be in \[0, 1\]"),
        (["x" * 200, *FAST], "200 UTF-8 bytes, but at most 127 fit"),
    ],
)
def test_bad_input_exits_1_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys, args, message
) -> None:
    out = tmp_path / "out.wav"
    assert main([args[0], "-o", str(out), *args[1:]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert re.search(message, errors[0]), errors[0]
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder(tmp_path: Path, capsys) -> None:
    assert main(["x", "-o", str(tmp_path / "no" / "out.wav"), *FAST]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_help_has_examples(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--num-takes" in text and "--sampler" in text
