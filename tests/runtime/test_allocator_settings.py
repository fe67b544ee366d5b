"""use_expandable_segments: switch the caching allocator once, and never over the process's choice.

A capture on CUDA fragments fixed-size segments (runtime/graphs.py); the runtime switches to
expandable ones only where nothing chose settings. torch's setter and getter are replaced by a
recorder here, so the process's real allocator is untouched.
"""

from __future__ import annotations

import pytest
import torch

from runtime import graphs
from runtime.graphs import ALLOC_CONF_VARIABLES, EXPANDABLE_SEGMENTS, use_expandable_segments


class FakeAllocator:
    """torch._C's allocator-settings setter and getter, recording what was set."""

    def __init__(self) -> None:
        self.settings = ""
        self.calls: list[str] = []

    def set(self, settings: str) -> None:
        self.calls.append(settings)
        self.settings = settings

    def get(self) -> str:
        return self.settings


@pytest.fixture
def allocator(monkeypatch: pytest.MonkeyPatch) -> FakeAllocator:
    fake = FakeAllocator()
    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", fake.set, raising=False)
    monkeypatch.setattr(torch._C, "_accelerator_getAllocatorSettings", fake.get, raising=False)
    monkeypatch.setattr(graphs, "_handed", "")
    for name in ALLOC_CONF_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return fake


def test_switches_when_nothing_was_chosen(allocator: FakeAllocator) -> None:
    assert use_expandable_segments() is True
    assert allocator.calls == [EXPANDABLE_SEGMENTS]
    assert graphs.allocator_settings() == EXPANDABLE_SEGMENTS


def test_switches_once(allocator: FakeAllocator) -> None:
    assert use_expandable_segments() is True
    assert use_expandable_segments() is False
    assert allocator.calls == [EXPANDABLE_SEGMENTS]


@pytest.mark.parametrize("name", ALLOC_CONF_VARIABLES)
def test_leaves_the_process_choice_alone(
    allocator: FakeAllocator, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "max_split_size_mb:512")
    assert use_expandable_segments() is False
    assert allocator.calls == []


def test_an_empty_variable_is_no_choice(
    allocator: FakeAllocator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOC_CONF_VARIABLES[1], "")
    assert use_expandable_segments() is True


def test_settings_read_from_the_environment_without_torch_getter(
    allocator: FakeAllocator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(torch._C, "_accelerator_getAllocatorSettings")
    assert graphs.allocator_settings() == ""
    monkeypatch.setenv(ALLOC_CONF_VARIABLES[1], EXPANDABLE_SEGMENTS)
    assert graphs.allocator_settings() == EXPANDABLE_SEGMENTS


def test_switches_once_where_torch_reports_nothing(
    allocator: FakeAllocator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch 2.11 on the H200 reported '' after the switch; the runtime remembers what it set."""
    monkeypatch.setattr(torch._C, "_accelerator_getAllocatorSettings", lambda: "")
    assert use_expandable_segments() is True
    assert graphs.allocator_settings() == EXPANDABLE_SEGMENTS
    assert use_expandable_segments() is False
    assert allocator.calls == [EXPANDABLE_SEGMENTS]


def test_a_cpu_pipeline_does_not_touch_the_allocator(allocator: FakeAllocator, build) -> None:
    from runtime import Pipeline

    Pipeline(build, device="cpu")
    assert allocator.calls == []
