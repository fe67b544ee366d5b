"""The `presto` model inside Triton's Python backend: a batch of requests in, each one's audio out.

Triton's dynamic batcher hands `execute` a list of requests (each of n >= 1 rows; every input is
(n, 1)). Each request is checked on its own with the runtime's rules (`Pipeline.check_take` and
`Pipeline.frames_for`), so a bad one gets its own INVALID_ARG error with the CLI's one-line message
while the others run. The good rows are grouped by (frames, stereo) and each group is packed into
the build's batch buckets (`Pipeline.generate_takes`), so each take equals its seed generated alone.

One model instance is one stub process holding one `Pipeline` on one device (one per GPU, or the
CPU). `initialize` captures every bucket's CUDA graph before returning, and Triton reports the
model ready only after that; then, unless `runtime.serve --no-gc-freeze`, it freezes the heap out of
Python's garbage collector (runtime/gc_pauses.py).

Outputs per request: `audio` (n, C, T) float32, C = 2 (stereo) or 1 (mono), T samples at
`sample_rate` (n, 1) int32 Hz.

This module runs in the stub, where `triton_python_backend_utils` exists; `parse_request` and
`group_rows` are plain functions that tests call without Triton.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from presto_common.errors import InputError, PrestoError
from runtime.gc_pauses import GCPauses, freeze_start_up
from runtime.packing import Take
from runtime.pipeline import Pipeline
from runtime.triton_repo import INPUTS


@dataclass(frozen=True)
class Parsed:
    """One request's rows, checked: all share one duration (in frames) and stereo flag."""

    takes: tuple[Take, ...]
    frames: int
    stereo: bool


def _column(arrays: Mapping[str, np.ndarray | None], name: str, n: int) -> list | None:
    """Input `name` as n Python values, None when the optional input is absent."""
    value = arrays.get(name)
    if value is None:
        return None
    if value.shape[0] != n or value.size != n:
        raise InputError(
            f"input {name} has shape {list(value.shape)}; expected [{n}, 1] like prompt"
        )
    return value.reshape(n).tolist()


def parse_request(arrays: Mapping[str, np.ndarray | None], pipe: Pipeline) -> Parsed:
    """Check one request's input arrays {name: (n, 1) array or None} against `pipe`'s build.

    Raises InputError (or ShapeError for a duration with no bucket) with the CLI's message.
    """
    prompts = arrays.get("prompt")
    if prompts is None or prompts.size == 0:
        raise InputError("the request has no prompt; send a prompt (BYTES) and a seed (INT64)")
    n = prompts.shape[0]
    columns = {name: _column(arrays, name, n) for name, _, _ in INPUTS}
    if columns["seed"] is None:
        raise InputError("the request has no seed; send a seed (INT64) with each prompt")
    takes, keys = [], set()
    for i in range(n):
        raw = columns["prompt"][i]
        try:
            prompt = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            raise InputError(f"prompt {raw[:40]!r} is not UTF-8 text; send UTF-8") from None
        bpm = columns["bpm"][i] if columns["bpm"] else 120.0
        width = columns["width"][i] if columns["width"] else 1.0
        take = pipe.check_take(Take(prompt, int(columns["seed"][i]), float(bpm), float(width)))
        duration = columns["duration_s"][i] if columns["duration_s"] else None
        if duration is not None and not math.isfinite(duration):
            raise InputError(f"duration_s={duration} must be a finite number of seconds")
        stereo = not (columns["mono"][i] if columns["mono"] else False)
        takes.append(take)
        keys.add((pipe.frames_for(duration), stereo))
    if len(keys) > 1:
        raise InputError(
            f"the {n} rows of one request ask for {len(keys)} (duration, mono) pairs; send rows "
            "of other durations or channel counts as separate requests"
        )
    ((frames, stereo),) = keys
    return Parsed(tuple(takes), frames, stereo)


def group_rows(parsed: list[Parsed | None]) -> dict[tuple[int, bool], list[int]]:
    """Request indices by (frames, stereo), skipping refused requests (None), in arrival order."""
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, p in enumerate(parsed):
        if p is not None:
            groups.setdefault((p.frames, p.stereo), []).append(i)
    return groups


def run_groups(pipe: Pipeline, parsed: list[Parsed | None]) -> dict[int, np.ndarray | PrestoError]:
    """Generate every good request: {request index: audio (n, C, T) float32, or the error of its
    group}. A group is packed into the build's buckets by `Pipeline.generate_takes`."""
    out: dict[int, np.ndarray | PrestoError] = {}
    for (frames, stereo), members in group_rows(parsed).items():
        takes = [t for i in members for t in parsed[i].takes]
        try:
            audio = pipe.generate_takes(  # pinned: Triton copies the responses out at once
                takes, duration_s=pipe.catalog.seconds(frames), stereo=stereo, pinned=True
            )
        except PrestoError as err:  # e.g. NaN from a build's precision: this group's requests fail
            out.update({i: err for i in members})
            continue
        start = 0
        for i in members:
            n = len(parsed[i].takes)
            out[i] = audio.samples[start : start + n]
            start += n
    return out


class TritonPythonModel:
    """Triton's Python-backend entry points; see the module docstring."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        params = {
            k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()
        }
        gpu = args["model_instance_kind"] == "GPU"
        device = f"cuda:{int(args['model_instance_device_id'])}" if gpu else "cpu"
        start = time.perf_counter()
        self.pipe = Pipeline(
            params["engines"],
            backend=params["backend"],
            device=device,
            cuda_graph=json.loads(params["cuda_graph"]),
        )
        warmed = self.pipe.warm_up(stereo=tuple(json.loads(params["warm_up"])))
        self._device = device
        # After the warm-up, so the engines and captured graphs are frozen too (runtime/gc_pauses.py)
        frozen = freeze_start_up() if json.loads(params.get("gc_freeze", "false")) else 0
        # Line-buffered appends: each execution's line is one write, whole even with two instances.
        log_path = params.get("timings_log", "")
        self._timings = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115
        self._gc = GCPauses().start() if self._timings is not None else None
        pb_utils.Logger.log_info(
            f"presto on {device} ({self.pipe.backend}): {warmed} buckets warmed up "
            f"(CUDA graphs captured: {self.pipe.cuda_graph}) in {time.perf_counter() - start:.1f} s; "
            f"{frozen} objects frozen out of garbage collection"
        )

    def _arrays(self, request) -> dict[str, np.ndarray | None]:
        get: Callable = self._pb.get_input_tensor_by_name
        arrays = {}
        for name, _, _ in INPUTS:
            tensor = get(request, name)
            arrays[name] = None if tensor is None else tensor.as_numpy()
        return arrays

    def execute(self, requests: list) -> list:
        pb = self._pb
        start = time.perf_counter()
        if self._gc is not None:
            self._gc.take()  # what ran between executions is not this one's
        parsed: list[Parsed | None] = []
        refused: dict[int, PrestoError] = {}
        for i, request in enumerate(requests):
            try:
                parsed.append(parse_request(self._arrays(request), self.pipe))
            except PrestoError as err:  # this request alone is refused, with the CLI's message
                parsed.append(None)
                refused[i] = err
        read = time.perf_counter()
        results = run_groups(self.pipe, parsed)
        generated = time.perf_counter()
        sr = self.pipe.manifest.sample_rate
        responses = []
        for i in range(len(requests)):
            result = refused.get(i, results.get(i))
            if isinstance(result, PrestoError):
                code = pb.TritonError.INVALID_ARG if i in refused else pb.TritonError.INTERNAL
                responses.append(pb.InferenceResponse(error=pb.TritonError(str(result), code)))
                continue
            rate = np.full((result.shape[0], 1), sr, dtype=np.int32)
            responses.append(
                pb.InferenceResponse(
                    [
                        pb.Tensor("audio", np.ascontiguousarray(result, dtype=np.float32)),
                        pb.Tensor("sample_rate", rate),
                    ]
                )
            )
        if self._timings is not None:
            self._log_timings(parsed, start, read, generated, time.perf_counter())
        return responses

    def _log_timings(self, parsed: list, start: float, read: float, gen: float, end: float) -> None:
        """One JSON line for `runtime.serve --timings-log`: where one execution's time went (ms)."""
        line = {
            "time": time.time(),
            "device": self._device,
            "requests": len(parsed),
            "rows": sum(len(p.takes) for p in parsed if p is not None),
            "read_ms": (read - start) * 1e3,
            "generate_ms": (gen - read) * 1e3,
            "answer_ms": (end - gen) * 1e3,
            **(self._gc.take() if self._gc is not None else {}),  # gc_ms, gc_max_ms, gc_collections
        }
        try:
            self._timings.write(json.dumps(line) + "\n")
        except OSError as err:  # a full disk must not fail the requests: say so once, stop logging
            self._pb.Logger.log_warn(f"--timings-log: {err}; no more timings are written")
            self._timings.close()
            self._timings = None

    def finalize(self) -> None:
        if self._gc is not None:
            self._gc.stop()
        self.pipe.release_graphs()
        if self._timings is not None:
            self._timings.close()
