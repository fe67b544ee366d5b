"""The manifest contract: `python -m pytest tests/runtime/test_manifest.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from presto_common.errors import ArtifactError
from runtime.manifest import (
    SCHEMA_VERSION,
    Artifact,
    Manifest,
    SamplerDefaults,
    TensorInfo,
    sha256_file,
)


def make_manifest(tmp_path: Path) -> Manifest:
    (tmp_path / "dit.onnx").write_bytes(b"graph bytes")
    art = Artifact(
        component="dit",
        backend="onnx",
        file="dit.onnx",
        sha256=sha256_file(tmp_path / "dit.onnx"),
        size_bytes=11,
        precision="fp32",
        inputs=(TensorInfo("x", "float32", (1, 32, 46)), TensorInfo("sigma", "float32", (1,))),
        outputs=(TensorInfo("x0", "float32", (1, 32, 46)),),
        batch=1,
        frames=46,
        budget=2,
        build={"build_s": 1.0},
    )
    sampler = SamplerDefaults(
        kind="ping-pong",
        num_steps=4,
        rho=7.0,
        sigma_min=0.002,
        sigma_max=80.0,
        sigma_data=0.5,
        sigmas=(80.0, 9.7, 0.47, 0.002),
        step_budgets=(2, 1, 0, 0),
        budgets=(2, 1, 1, 0, 0),
        sigma_thresholds=(24.41, 5.839, 0.9654, 0.08509),
        cfg_scale=0.8,
    )
    return Manifest(
        schema_version=SCHEMA_VERSION,
        toolkit_version="0.1.0",
        model_name="tiny",
        config={"a": 1},
        config_hash="abc",
        sample_rate=44100,
        hop_length=960,
        latent_channels=32,
        max_tokens=128,
        tokenizer="byte",
        bpm_range=(40.0, 240.0),
        max_duration_s=10.0,
        sampler=sampler,
        artifacts=(art,),
        build_env={"onnx_opset": 18},
    )


def test_round_trip(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(manifest.to_json())
    assert Manifest.load(tmp_path) == manifest
    manifest.verify_files(tmp_path)
    assert manifest.find("dit", "onnx", budget=2) == [manifest.artifacts[0]]
    assert manifest.find("dit", "onnx", budget=3) == []


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    data = json.loads(make_manifest(tmp_path).to_json())
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=f"schema_version {SCHEMA_VERSION + 1}.*rebuild"):
        Manifest.load(tmp_path)


def test_corrupt_and_missing_files_are_refused(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path)
    (tmp_path / "dit.onnx").write_bytes(b"graph bytez")
    with pytest.raises(ArtifactError, match="dit.onnx is corrupt: sha256"):
        manifest.verify_files(tmp_path)
    (tmp_path / "dit.onnx").unlink()
    with pytest.raises(ArtifactError, match="dit.onnx is missing"):
        manifest.verify_files(tmp_path)


def test_missing_and_malformed_manifests(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a build folder"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION}))
    with pytest.raises(ArtifactError, match="malformed"):
        Manifest.load(tmp_path)


def test_a_sampler_that_is_not_an_object_is_malformed_not_a_traceback(tmp_path: Path) -> None:
    data = json.loads(make_manifest(tmp_path).to_json())
    data["sampler"] = "ping-pong"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="malformed.*rebuild"):
        Manifest.load(tmp_path)


def test_an_unreadable_manifest_names_the_command_it_can_still_recover(tmp_path: Path) -> None:
    data = json.loads(make_manifest(tmp_path).to_json())
    data["schema_version"] = 1
    data["build_env"]["source"] = {"preset": "tiny"}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="schema_version 1") as err:
        Manifest.load(tmp_path)
    assert f"`python -m export.build --preset tiny --out {tmp_path}`" in str(err.value)
    del data["build_env"]["source"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="add the --preset or --checkpoint it was built from"):
        Manifest.load(tmp_path)
