"""The served model's request checks and the generated Triton files, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from presto_common.errors import InputError, ShapeError
from runtime import Pipeline
from runtime.triton_model import group_rows, parse_request, run_groups
from runtime.triton_repo import ModelSettings, config_pbtxt, model_py


@pytest.fixture(scope="module")
def pipe(build):
    return Pipeline(build, backend="onnxruntime", device="cpu")


def _arrays(n=1, **extra):
    arrays = {
        "prompt": np.array([[b"warm lofi piano"]] * n, dtype=object),
        "seed": np.arange(n, dtype=np.int64)[:, None],
    }
    arrays.update({k: np.asarray(v)[:, None] for k, v in extra.items()})
    return arrays


def test_parse_request_defaults_and_rows(pipe):
    parsed = parse_request(_arrays(3, bpm=np.float32([90, 100, 110])), pipe)
    assert [t.seed for t in parsed.takes] == [0, 1, 2]
    assert [t.bpm for t in parsed.takes] == [90, 100, 110]
    assert parsed.stereo and parsed.frames == max(pipe.built_frames(1))


@pytest.mark.parametrize(
    "arrays, error, fragment",
    [
        ({"prompt": np.array([[b"x"]], dtype=object)}, InputError, "no seed"),
        ({"seed": np.int64([[1]])}, InputError, "no prompt"),
        (_arrays(1, bpm=np.float32([np.nan])), InputError, "bpm=nan"),
        (_arrays(1, duration_s=np.float32([np.inf])), InputError, "finite"),
        (_arrays(1, duration_s=np.float32([3.0])), ShapeError, "nearest built duration"),
        (_arrays(2, mono=np.array([True, False])), InputError, "separate requests"),
        ({**_arrays(2), "bpm": np.float32([[90]])}, InputError, "expected [2, 1]"),
        ({**_arrays(1), "prompt": np.array([[b"\xff\xfe"]], dtype=object)}, InputError, "UTF-8"),
    ],
)
def test_parse_request_refuses_with_one_line(pipe, arrays, error, fragment):
    with pytest.raises(error, match=fragment.replace("[", r"\[")):
        parse_request(arrays, pipe)


def test_groups_pack_requests_of_one_shape_and_skip_refused(pipe):
    a = parse_request(_arrays(1), pipe)
    b = parse_request(_arrays(2, mono=np.array([True, True])), pipe)
    c = parse_request(_arrays(1), pipe)
    assert group_rows([a, None, b, c]) == {(a.frames, True): [0, 3], (b.frames, False): [2]}
    out = run_groups(pipe, [a, None, b, c])
    assert set(out) == {0, 2, 3}
    assert out[0].shape[:2] == (1, 2) and out[2].shape[:2] == (2, 1)
    np.testing.assert_array_equal(out[0], out[3])  # same seed 0, same bucket run


def test_config_pbtxt_instances_and_batching(tmp_path):
    settings = ModelSettings(tmp_path, "torch", (0, 1), 8, (1, 8), 2.5)
    text = config_pbtxt(settings)
    assert "kind: KIND_GPU count: 1 gpus: [ 0, 1 ]" in text
    assert "max_batch_size: 8" in text and "preferred_batch_size: [ 1, 8 ]" in text
    assert "max_queue_delay_microseconds: 2500" in text
    assert 'name: "bpm" data_type: TYPE_FP32 dims: [ 1 ] optional: true' in text
    assert 'name: "seed" data_type: TYPE_INT64 dims: [ 1 ] }' in text
    cpu = config_pbtxt(ModelSettings(tmp_path, "auto", (), 2, (1, 2, 4), 0))
    assert "KIND_CPU" in cpu and "preferred_batch_size: [ 1, 2 ]" in cpu


def test_model_py_puts_the_paths_first():
    namespace: dict = {}
    code = model_py(["/nowhere/a", "/nowhere/b"]).replace("from runtime", "# from runtime")
    import sys

    saved = list(sys.path)
    try:
        exec(compile(code, "model.py", "exec"), namespace)
        assert sys.path[:2] == ["/nowhere/a", "/nowhere/b"]
    finally:
        sys.path[:] = saved


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--gpus", "0"], "serve on the CPU with --cpu"),
        (["--gpus", "0,x"], "not a list of GPU indices"),
        (["--cpu", "--gpus", "0"], "contradict"),
        (["--cpu", "--http-port", "0"], "not a TCP port"),
        (["--cpu", "--grpc-port", "8000"], "must differ"),
        (["--cpu", "--max-queue-delay-ms", "-1"], "must be >= 0"),
        (["--cpu", "--timings-log", "/"], "is a folder"),
        (["--cpu", "--timings-log", "/no/such/folder/t.jsonl"], "does not exist"),
    ],
)
def test_serve_refuses_bad_flags_before_starting_anything(build, capsys, flags, fragment):
    from runtime.serve import main

    assert main(["--engines", str(build), *flags]) == 1
    assert fragment in capsys.readouterr().err


def test_serve_settings_come_from_the_build(build):
    from runtime.serve import build_parser, settings_for

    settings = settings_for(build_parser().parse_args(["--engines", str(build), "--cpu"]))
    assert settings.gpus == () and settings.preferred_batches == (1, 2)
    assert settings.max_batch == 2 and settings.engines == build.resolve()
    assert (
        settings.gc_freeze
        and 'key: "gc_freeze" value: { string_value: "true" }' in config_pbtxt(settings)
    )
    thawed = build_parser().parse_args(["--engines", str(build), "--cpu", "--no-gc-freeze"])
    assert 'string_value: "false" }' in config_pbtxt(settings_for(thawed)).split("gc_freeze")[1]
