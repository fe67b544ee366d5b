"""A client of the `presto` model that `python -m runtime.serve` serves through Triton.

    from runtime import Client
    client = Client("localhost:8000")              # or Client("localhost:8001", protocol="grpc")
    client.wait_ready(60)
    audio, sample_rate = client.generate("warm lofi piano", seed=0, bpm=90)   # (C, T) float32, Hz

The server judges every request (prompt, BPM, duration, width): a refusal is a ServerError whose
message is the server's own one line. tritonclient is imported when a Client is made, so
`import runtime` never needs it. One Client per thread: tritonclient's HTTP client (gevent) and
gRPC stub are not meant to be shared between threads, so each thread makes its own.
"""

from __future__ import annotations

import http.client
import logging
import time
import uuid
from typing import Any

import numpy as np

from presto_common.errors import BackendUnavailable, InputError, ServerError
from runtime.triton_repo import MODEL_NAME  # the one model runtime.serve serves

log = logging.getLogger(__name__)

PROTOCOLS = ("http", "grpc")
INSTALL_HINT = 'pip install -e ".[serve]"'
# gRPC statuses that mean the server was not reached or did not answer in time, not a refusal.
_UNREACHABLE = ("StatusCode.UNAVAILABLE",)
_TIMED_OUT = ("StatusCode.DEADLINE_EXCEEDED",)
_INT64 = np.iinfo(np.int64)


def split_url(url: str, what: str = "url") -> tuple[str, int]:
    """'HOST:PORT' -> (HOST, PORT); InputError naming `what` for anything else.

    >>> split_url("localhost:8000")
    ('localhost', 8000)
    """
    host, sep, port = str(url).rpartition(":")
    hint = "give HOST:PORT, e.g. localhost:8000"
    if "://" in url or "/" in url:
        raise InputError(f"{what}={url!r} has a scheme or path; {hint} (no http://, no /path)")
    if not sep or not host:
        raise InputError(f"{what}={url!r} has no {'port' if host or not sep else 'host'}; {hint}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InputError(f"{what}={url!r}: port {port!r} is not a whole number in 1..65535; {hint}")
    return host, int(port)


def _tritonclient(protocol: str) -> Any:
    """tritonclient.http or tritonclient.grpc; BackendUnavailable with the pip fix if missing."""
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError as err:
        raise BackendUnavailable(
            f"the {protocol} client needs tritonclient, which does not import ({err}); "
            f"install it with `{INSTALL_HINT}`"
        ) from None
    return module


class Client:
    """Talks to the `presto` model of a Triton server at url 'HOST:PORT' over http or grpc.

    timeout_s bounds each call (connect and answer), in seconds. shared_memory_mib > 0 (a server
    on this host only) has Triton write `audio` into a system shared-memory region of that many
    MiB that this client registers, instead of sending it in the response body: 32 s of stereo is
    11.3 MB of float32 (10.8 MiB). Not thread-safe: make one Client per thread.
    """

    split_url = staticmethod(split_url)

    def __init__(
        self,
        url: str,
        protocol: str = "http",
        timeout_s: float = 120.0,
        shared_memory_mib: float = 0.0,
    ) -> None:
        self.host, self.port = split_url(url)
        if protocol not in PROTOCOLS:
            raise InputError(f"protocol={protocol!r} is not one of {PROTOCOLS}; pass http or grpc")
        if not timeout_s > 0:
            raise InputError(f"timeout_s={timeout_s} must be > 0 seconds; pass e.g. 120")
        self.url, self.protocol, self.timeout_s = f"{self.host}:{self.port}", protocol, timeout_s
        self._triton = _tritonclient(protocol)
        if protocol == "http":
            self._client = self._triton.InferenceServerClient(
                self.url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            self._client = self._triton.InferenceServerClient(self.url)
        self._region: tuple[str, Any, int] | None = None  # (name, handle, bytes)
        if not 0 <= shared_memory_mib < 1 << 20:
            raise InputError(
                f"shared_memory_mib={shared_memory_mib} must be in [0, 2**20); 0 turns it off, "
                "11 holds 32 s of stereo"
            )
        if shared_memory_mib:
            self._register_region(int(shared_memory_mib * (1 << 20)))

    def _register_region(self, size: int) -> None:
        """Create a system shared-memory region of `size` bytes and register it with the server."""
        import tritonclient.utils.shared_memory as shm

        name = f"presto-client-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, f"/{name}", size)
        try:
            self._call(self._client.register_system_shared_memory, name, f"/{name}", size)
        except ServerError:
            shm.destroy_shared_memory_region(handle)
            raise
        self._region = (name, handle, size)

    # --- requests ---------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        seed: int,
        bpm: float | None = None,
        duration_s: float | None = None,
        width: float | None = None,
        mono: bool = False,
    ) -> tuple[np.ndarray, int]:
        """One take: audio (C, T) float32 (C = 2, or 1 with mono) and its sample rate in Hz.

        None leaves a value to the server's default (120 BPM, the longest built duration, width 1).
        Raises ServerError with the server's message when it refuses the request.
        """
        try:
            text = prompt.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError(
                f"prompt has a character UTF-8 cannot encode at position {err.start}; "
                "pass plain text"
            ) from None
        if not _INT64.min <= int(seed) <= _INT64.max:
            raise InputError(f"seed={seed} does not fit a 64-bit integer; pass e.g. seed=0")
        values: dict[str, tuple[np.ndarray, str]] = {
            "prompt": (np.array([[text]], dtype=np.object_), "BYTES"),
            "seed": (np.array([[seed]], dtype=np.int64), "INT64"),
            "mono": (np.array([[bool(mono)]], dtype=np.bool_), "BOOL"),
        }
        for name, value in (("bpm", bpm), ("duration_s", duration_s), ("width", width)):
            if value is not None:
                values[name] = (np.array([[value]], dtype=np.float32), "FP32")
        inputs = []
        for name, (array, dtype) in values.items():
            tensor = self._triton.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [self._triton.InferRequestedOutput(n) for n in ("audio", "sample_rate")]
        if self._region is not None:
            name, _, size = self._region
            outputs[0].set_shared_memory(name, size)
        result = self._call(self._client.infer, MODEL_NAME, inputs, outputs=outputs)
        audio, rate = self._audio(result), result.as_numpy("sample_rate")
        if audio is None or rate is None or audio.ndim != 3 or audio.shape[0] != 1:
            shape = None if audio is None else audio.shape
            raise ServerError(
                f"{self.url} answered without audio (1, C, T) and sample_rate (got audio {shape}); "
                f"is it a `python -m runtime.serve` server of this version?"
            )
        return np.asarray(audio[0], dtype=np.float32), int(rate.reshape(-1)[0])

    def _audio(self, result: Any) -> np.ndarray | None:
        """The `audio` output, from the body or copied out of this client's shared memory."""
        if self._region is None:
            return result.as_numpy("audio")
        import tritonclient.utils.shared_memory as shm

        out = result.get_output("audio")
        if out is None:
            return None
        shape = out["shape"] if isinstance(out, dict) else list(out.shape)
        return np.array(shm.get_contents_as_numpy(self._region[1], np.float32, shape))

    def metadata(self) -> dict[str, Any]:
        """The server's and the model's metadata (name, version, inputs, outputs) as dicts."""
        as_json = {} if self.protocol == "http" else {"as_json": True}
        return {
            "server": self._call(self._client.get_server_metadata, **as_json),
            "model": self._call(self._client.get_model_metadata, MODEL_NAME, **as_json),
        }

    def statistics(self) -> dict[str, Any]:
        """Triton's cumulative statistics of the `presto` model (`model_stats[0]` of the v2
        statistics extension: counts, and nanoseconds per phase under `inference_stats`)."""
        as_json = {} if self.protocol == "http" else {"as_json": True}
        stats = self._call(self._client.get_inference_statistics, MODEL_NAME, **as_json)
        return stats["model_stats"][0]

    # --- readiness --------------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Whether the server answers and the `presto` model is loaded."""
        return self._not_ready_reason() is None

    def wait_ready(self, timeout_s: float, poll_s: float = 0.5) -> None:
        """Poll is_ready for up to timeout_s seconds; ServerError naming the url and the last reason."""
        deadline = time.monotonic() + timeout_s
        while (reason := self._not_ready_reason()) is not None:
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"the {MODEL_NAME} model at {self.protocol}://{self.url} is not ready after "
                    f"{timeout_s:g} s: {reason}"
                )
            time.sleep(poll_s)

    def _not_ready_reason(self) -> str | None:
        try:
            if not self._call(self._client.is_server_live):
                return "the server answers but is not live; see its log"
            if not self._call(self._client.is_model_ready, MODEL_NAME):
                return (
                    f"the server is up but its {MODEL_NAME} model is not loaded; wait for "
                    "`python -m runtime.serve` to log that it loaded, or see why not in its log"
                )
        except ServerError as err:
            return str(err)
        return None

    # --- errors -----------------------------------------------------------------------------------

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) with connection failures and Triton errors as ServerError.

        gRPC takes its timeout per call; the HTTP client was given it when made.
        """
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        try:
            return fn(*args, **kwargs)
        except TimeoutError:  # HTTP: no answer within network_timeout
            raise self.timed_out() from None
        except OSError as err:  # refused, unknown host
            raise self.unreachable(err.strerror or str(err) or type(err).__name__) from None
        except http.client.HTTPException as err:  # HTTP: the server closed the connection midway
            raise self.unreachable(f"{type(err).__name__}: {err}".rstrip(": ")) from None
        except self._triton.InferenceServerException as err:
            raise self.server_error(err) from None

    def server_error(self, err: Exception) -> ServerError:
        """A tritonclient InferenceServerException as a ServerError: the server's message alone
        (without tritonclient's '[400] ' status prefix), or 'cannot reach' for gRPC's
        unavailable and deadline statuses."""
        status, message = str(err.status()), err.message()
        # One line, as every PrestoError: the server's message should be one already.
        message = " ".join(str(message if message is not None else err).splitlines()).strip()
        if status in _UNREACHABLE:
            return self.unreachable(message)
        if status in _TIMED_OUT:
            return self.timed_out()
        return ServerError(message or f"{self.url} failed the request with status {status}")

    def unreachable(self, reason: str) -> ServerError:
        return ServerError(
            f"cannot reach the server at {self.protocol}://{self.url} ({reason}); "
            f"is `python -m runtime.serve` running and listening on port {self.port}?"
        )

    def timed_out(self) -> ServerError:
        return ServerError(
            f"no answer from {self.protocol}://{self.url} within {self.timeout_s:g} s; the server "
            "may be overloaded or stuck (see its log), or allow longer (timeout_s, --timeout-s)"
        )

    def close(self) -> None:
        """Unregister and free the shared-memory region, if any, and close the connection."""
        if self._region is not None:
            import tritonclient.utils.shared_memory as shm

            name, handle, _ = self._region
            self._region = None
            try:
                self._unregister(name)
            finally:
                shm.destroy_shared_memory_region(handle)
        self._client.close()

    def _unregister(self, name: str, wait_s: float = 2.0) -> None:
        """Unregister region `name`. Triton releases a response's hold on its output region a
        moment after the client has it (seen over gRPC: "it is currently in use"), so retry."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._call(self._client.unregister_system_shared_memory, name)
            except ServerError as err:
                if "currently in use" not in str(err) or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
