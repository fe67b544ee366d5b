"""A build never destroys what --out names unless it is an earlier build:
`python -m pytest tests/export/test_out_safety.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import export.folder
from export import build_folder
from export.build import main
from presto_common.errors import OutputError
from runtime.manifest import MANIFEST_FILE, Manifest

TINY = ["--preset", "tiny", "--backends", "onnx", "--durations-s", "1", "--no-verify", "-q"]


@pytest.fixture
def no_model(monkeypatch) -> None:
    """Fail the test if a model is loaded: refusals must come before it."""

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(export.folder, "load_model", loaded)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


def test_a_folder_that_is_not_a_build_is_refused(tmp_path: Path, capsys, no_model) -> None:
    out = tmp_path / "songs"
    (out / "sub").mkdir(parents=True)
    (out / "lyrics.txt").write_text("la la")
    (out / "sub" / "notes.txt").write_text("verse")
    before = tree(out)
    assert main([*TINY, "--out", str(out)]) == 1
    (line,) = error_lines(capsys)
    assert str(out) in line and "lyrics.txt, sub/" in line and "no manifest.json" in line
    assert "choose another --out" in line and "empty it" in line
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["songs"]  # nothing beside it
    with pytest.raises(OutputError, match="is not a build folder"):
        build_folder(out, preset="tiny")
    assert tree(out) == before


def test_a_file_is_refused(tmp_path: Path, capsys, no_model) -> None:
    out = tmp_path / "README.md"
    out.write_text("# mine\n")
    assert main([*TINY, "--out", str(out)]) == 1
    (line,) = error_lines(capsys)
    assert f"--out {out} is a file, not a folder" in line and "choose another --out" in line
    assert out.read_text() == "# mine\n"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]


def test_a_symlink_and_a_path_under_a_file_are_refused(tmp_path: Path, no_model) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OutputError, match="is a symbolic link"):
        build_folder(tmp_path / "link", preset="tiny")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file is a file, not a folder"):
        build_folder(tmp_path / "file" / "out", preset="tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link", "real"]


def test_an_unwritable_parent_is_refused(tmp_path: Path, monkeypatch, no_model) -> None:
    # Root may write anywhere, so the permission check itself stands in for a read-only folder.
    monkeypatch.setattr(export.folder.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(OutputError, match=f"no write permission in {tmp_path}"):
        build_folder(tmp_path / "new" / "out", preset="tiny")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_folder_is_built_into(tmp_path: Path, capsys) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert main([*TINY, "--out", str(out)]) == 0
    Manifest.load(out).verify_files(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_an_earlier_build_is_replaced(tmp_path: Path, tiny_onnx_build: Path, capsys) -> None:
    out = shutil.copytree(tiny_onnx_build, tmp_path / "old")
    (out / "stale.onnx").write_bytes(b"from an earlier build")
    assert main([*TINY, "--batch-sizes", "2", "--out", str(out)]) == 0
    manifest = Manifest.load(out)
    assert {a.batch for a in manifest.artifacts if a.component == "vae_decoder"} == {2}
    assert not (out / "stale.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no backup or staging left


def test_an_unreadable_build_is_replaced_with_one_warning(
    tmp_path: Path, tiny_onnx_build: Path, capsys
) -> None:
    out = shutil.copytree(tiny_onnx_build, tmp_path / "broken")
    (out / MANIFEST_FILE).write_text("{not json")
    assert main([*TINY, "--out", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and str(out) in warnings[0]
    Manifest.load(out).verify_files(out)


def test_a_failed_swap_says_where_the_earlier_build_is(
    tmp_path: Path, tiny_onnx_build: Path, monkeypatch
) -> None:
    out = shutil.copytree(tiny_onnx_build, tmp_path / "build")
    old = json.loads((out / MANIFEST_FILE).read_text())
    real_rename = Path.rename

    def rename(self: Path, target):
        if self.name.startswith(".build.") and not self.name.startswith(".build.old."):
            raise OSError(18, "Invalid cross-device link")  # the new build cannot be moved in
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OutputError, match=f"the earlier build is back in {out} unchanged"):
        build_folder(out, preset="tiny", backends=("onnx",), durations_s=(1.0,), batch_sizes=(2,))
    assert json.loads((out / MANIFEST_FILE).read_text()) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]
