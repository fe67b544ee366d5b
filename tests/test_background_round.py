"""scripts/background_round.sh: a round started detached, polled, its output packed each time."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "background_round.sh"


def call(tmp_path: Path, *args: str, out: str = "o", wait: int = 20) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ROUND": str(tmp_path / "round"),
        "OUT": str(tmp_path / out),
        "WAIT_S": str(wait),
        "POLL_S": "0.2",
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )


def packed(tmp_path: Path, out: str) -> dict[str, bytes]:
    with tarfile.open(tmp_path / out / "round.tgz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_a_round_runs_detached_and_each_poll_brings_back_its_output(tmp_path: Path) -> None:
    marker = tmp_path / "go"
    cmd = f'echo started; while [ ! -e {marker} ]; do sleep 0.1; done; echo 7 > "$OUT/x"; exit 3'
    first = call(tmp_path, "start", cmd, out="o1", wait=1)
    assert first.returncode == 0, first.stderr
    assert "still running" in first.stdout
    again = call(tmp_path, "start", "true", out="o1b", wait=1)
    assert again.returncode == 2 and "running already" in again.stderr
    marker.touch()
    second = call(tmp_path, "poll", out="o2")
    assert second.returncode == 0 and "round ended: exit 3" in second.stdout
    files = packed(tmp_path, "o2")
    assert files["./out/x"] == b"7\n" and files["./rc"] == b"3\n"
    assert b"started" in files["./log"] and "./pid" not in files


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert call(tmp_path, "poll").returncode == 2  # nothing started
    assert call(tmp_path, "start").returncode == 2  # no command line
    assert call(tmp_path, "stop").returncode == 2


def test_the_round_runs_in_a_copy_that_the_next_call_cannot_replace(tmp_path: Path) -> None:
    # The device tool sends the working tree again with every call, replacing it under a round
    # that runs there; the round therefore runs in $ROUND/src, copied at start.
    cmd = (
        'pwd > "$OUT/cwd"; test -f scripts/background_round.sh && git rev-parse HEAD > "$OUT/head"'
    )
    first = call(tmp_path, "start", cmd, out="o1", wait=20)
    assert "round ended: exit 0" in first.stdout, first.stdout + first.stderr
    files = packed(tmp_path, "o1")
    assert files["./out/cwd"].decode().strip() == str(tmp_path / "round" / "src")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=SCRIPT.parents[1], capture_output=True, text=True
    ).stdout
    assert files["./out/head"].decode() == head  # the copy has the repository's .git
    assert not any(name.startswith("./src") for name in files)  # the copy is not packed
