"""runtime.remote.Client and the runtime.client CLI without a server:
`python -m pytest tests/runtime/test_client.py`.

A refusal, an unreachable port and a missing tritonclient must each be a one-line PrestoError; the
CLI must write nothing when the request fails. The end-to-end test against a real server lives with
runtime.serve's tests.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from presto_common.errors import BackendUnavailable, InputError, ServerError
from runtime import Client
from runtime import client as client_cli

pytest.importorskip("tritonclient")
from tritonclient.utils import InferenceServerException  # noqa: E402

REFUSAL = "bpm=400.0 is outside [40, 240]; pass a BPM in that range"


def free_port() -> int:
    """A port on which nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- urls ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost", "has no port"),
        (":8000", "has no host"),
        ("localhost:", "port ''"),
        ("localhost:http", "port 'http'"),
        ("localhost:0", "1..65535"),
        ("localhost:65536", "1..65535"),
        ("localhost:-1", "1..65535"),
        ("http://localhost:8000", "no http://"),
        ("localhost:8000/v2", "no /path"),
    ],
)
def test_a_bad_url_is_an_input_error_naming_it(url: str, says: str) -> None:
    with pytest.raises(InputError, match="HOST:PORT") as err:
        Client(url)
    assert says in str(err.value) and repr(url) in str(err.value)


def test_a_good_url_splits_into_host_and_port() -> None:
    client = Client("example.org:8001", protocol="grpc")
    assert (client.host, client.port, client.url) == ("example.org", 8001, "example.org:8001")
    assert Client.split_url("[::1]:8000") == ("[::1]", 8000)


def test_protocol_and_timeout_are_checked() -> None:
    with pytest.raises(InputError, match="'udp'"):
        Client("localhost:8000", protocol="udp")
    with pytest.raises(InputError, match="timeout_s=0"):
        Client("localhost:8000", timeout_s=0)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_refusal_is_the_servers_message_without_the_status_prefix(protocol: str) -> None:
    client = Client("localhost:8000", protocol=protocol)
    status = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    triton_error = InferenceServerException(REFUSAL, status=status)
    assert str(triton_error).startswith(f"[{status}] ")  # what the mapping must strip
    err = client.server_error(triton_error)
    assert isinstance(err, ServerError) and str(err) == REFUSAL


def test_grpc_unavailable_and_deadline_say_unreachable_and_timed_out() -> None:
    client = Client("box:8001", protocol="grpc", timeout_s=7)
    down = client.server_error(InferenceServerException("failed", status="StatusCode.UNAVAILABLE"))
    assert "grpc://box:8001" in str(down) and "python -m runtime.serve" in str(down)
    late = client.server_error(InferenceServerException("x", status="StatusCode.DEADLINE_EXCEEDED"))
    assert "within 7 s" in str(late)


def test_a_multiline_server_message_becomes_one_line() -> None:
    err = Client("localhost:8000").server_error(InferenceServerException("a\nb", status="500"))
    assert str(err) == "a b"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_nothing_listening_is_a_server_error_naming_url_and_fix(protocol: str) -> None:
    port = free_port()
    client = Client(f"127.0.0.1:{port}", protocol=protocol, timeout_s=10)
    with pytest.raises(ServerError, match="is `python -m runtime.serve` running") as err:
        client.generate("lofi", 0)
    assert f"127.0.0.1:{port}" in str(err.value)
    assert not client.is_ready()
    with pytest.raises(ServerError, match=f"not ready after 0.2 s: cannot reach .*:{port}"):
        client.wait_ready(0.2, poll_s=0.05)


def test_a_refused_infer_raises_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client("localhost:8000")

    def refuse(*args, **kwargs):
        raise InferenceServerException(REFUSAL, status="400")

    monkeypatch.setattr(client._client, "infer", refuse)
    with pytest.raises(ServerError) as err:
        client.generate("lofi", 0, bpm=400)
    assert str(err.value) == REFUSAL


class FakeResult:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)


def test_generate_sends_the_served_inputs_and_returns_c_by_t(monkeypatch) -> None:
    client, sent = Client("localhost:8000"), {}
    audio = np.random.default_rng(0).standard_normal((1, 2, 300)).astype(np.float32)

    def infer(model_name, inputs, outputs):
        sent.update(model=model_name, outputs=[o.name() for o in outputs])
        sent.update({i.name(): (i.datatype(), i.shape()) for i in inputs})
        return FakeResult({"audio": audio, "sample_rate": np.array([[44100]], np.int32)})

    monkeypatch.setattr(client._client, "infer", infer)
    out, rate = client.generate("lofi", 3, bpm=90, width=0.5)
    np.testing.assert_array_equal(out, audio[0])
    assert (out.dtype, rate) == (np.float32, 44100)
    assert sent["model"] == "presto" and sent["outputs"] == ["audio", "sample_rate"]
    assert sent["prompt"] == ("BYTES", [1, 1]) and sent["seed"] == ("INT64", [1, 1])
    assert sent["bpm"] == ("FP32", [1, 1]) and sent["width"] == ("FP32", [1, 1])
    assert sent["mono"] == ("BOOL", [1, 1])
    assert "duration_s" not in sent  # None is left to the server's default


def test_an_answer_without_audio_is_a_server_error(monkeypatch) -> None:
    client = Client("localhost:8000")
    monkeypatch.setattr(client._client, "infer", lambda *a, **k: FakeResult({}))
    with pytest.raises(ServerError, match="without audio"):
        client.generate("lofi", 0)


def test_a_seed_past_int64_is_an_input_error() -> None:
    with pytest.raises(InputError, match="seed=9223372036854775808"):
        Client("localhost:8000").generate("lofi", 2**63)


def test_missing_tritonclient_is_backend_unavailable_with_the_pip_fix(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # import now raises ImportError
    with pytest.raises(BackendUnavailable, match=r'pip install -e "\.\[serve\]"'):
        Client("localhost:8001", protocol="grpc")


def test_importing_runtime_does_not_import_tritonclient() -> None:
    code = "import sys, runtime; print(any(m.startswith('tritonclient') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the CLI --------------------------------------------------------------------------------------


def test_cli_refused_request_exits_1_prints_the_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def refuse(self, *args, **kwargs):
        raise ServerError(REFUSAL)

    monkeypatch.setattr(Client, "generate", refuse)
    out = tmp_path / "out.wav"
    assert client_cli.main(["lofi", "--url", "localhost:8000", "--bpm", "400", "-o", str(out)]) == 1
    assert f"error: {REFUSAL}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_the_answer_and_passes_the_flags(tmp_path: Path, monkeypatch) -> None:
    calls = []
    audio = np.linspace(-0.5, 0.5, 2 * 4410, dtype=np.float32).reshape(2, 4410)

    def answer(self, prompt, seed, **kwargs):
        calls.append((self.protocol, prompt, seed, kwargs))
        return audio, 44100

    monkeypatch.setattr(Client, "generate", answer)
    out = tmp_path / "out.wav"
    argv = ["lofi", "--url", "h:8001", "--protocol", "grpc", "--seed", "5", "--duration-s", "2"]
    assert client_cli.main([*argv, "--float-wav", "-o", str(out)]) == 0
    expected = {"bpm": None, "duration_s": 2.0, "width": None, "mono": False}
    assert calls == [("grpc", "lofi", 5, expected)]
    data, rate = soundfile.read(out, dtype="float32")
    assert rate == 44100 and data.shape == (4410, 2)
    np.testing.assert_array_equal(data.T, audio)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--url", "localhost", "-o", "{tmp}/out.wav"], "has no port"),
        (["--url", "localhost:8000", "-o", "{tmp}/out.mp3"], "written as WAV"),
        (["--url", "localhost:8000", "--seed", "-1", "-o", "{tmp}/out.wav"], "--seed -1"),
    ],
)
def test_cli_bad_flags_fail_before_any_request(tmp_path, monkeypatch, capsys, flags, says) -> None:
    def never(self, *args, **kwargs):
        raise AssertionError("no request may be sent")

    monkeypatch.setattr(Client, "generate", never)
    argv = ["lofi", *(f.format(tmp=tmp_path) for f in flags)]
    assert client_cli.main(argv) == 1
    assert says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_non_finite_audio_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    audio = np.zeros((1, 100), np.float32)
    audio[0, 7] = np.nan
    monkeypatch.setattr(Client, "generate", lambda self, *a, **k: (audio, 44100))
    assert (
        client_cli.main(["lofi", "--url", "h:8000", "--mono", "-o", str(tmp_path / "o.wav")]) == 1
    )
    assert list(tmp_path.iterdir()) == []


class _Unregistering:
    """A tritonclient stand-in whose unregister says "in use" `busy` times before it succeeds."""

    def __init__(self, busy: int) -> None:
        self.busy, self.calls = busy, 0

    def unregister_system_shared_memory(self, name):
        import tritonclient.http as httpclient

        self.calls += 1
        if self.calls <= self.busy:
            raise httpclient.InferenceServerException(
                f"Cannot unregister shared memory region '{name}', it is currently in use."
            )

    def close(self):
        pass


@pytest.mark.parametrize("busy, ok", [(3, True), (10**6, False)])
def test_close_waits_for_triton_to_release_the_region(busy, ok):
    import tritonclient.utils.shared_memory as shm

    client = Client("localhost:1")
    handle = shm.create_shared_memory_region("presto-test", "/presto-test-close", 64)
    client._region, client._client = ("presto-test", handle, 64), _Unregistering(busy)
    if ok:
        client.close()
        assert client._client.calls == busy + 1
    else:
        client._unregister = functools.partial(client._unregister, wait_s=0.1)
        with pytest.raises(ServerError, match="currently in use"):
            client.close()
    assert client._region is None  # the local region is freed either way
