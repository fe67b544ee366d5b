"""runtime.text_encoding on the CPU, with a stand-in engine that records its calls.

The CUDA-graph path (the batch-1 encoder captured and replayed) is checked bit for bit against the
uncaptured encoder in tests/gpu/test_runtime_gpu.py.
"""

from __future__ import annotations

import pytest
import torch

from presto_common.errors import InputError
from presto_common.tokenizer import encode_bytes
from runtime.text_encoding import TextEncoding

MAX_TOKENS = 16
D = 4


class Recorder:
    """An engine: ids (B, S), mask (B, S) -> (tokens (B, S, D),), reusing one output buffer like
    TensorRT engines do, and counting the rows it encoded."""

    def __init__(self) -> None:
        self.rows = 0
        self._out: torch.Tensor | None = None

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor]:
        self.rows += ids.shape[0]
        values = (ids * mask).float()[..., None].expand(*ids.shape, D)
        if self._out is None or self._out.shape != values.shape:
            self._out = torch.empty(values.shape)
        self._out.copy_(values)
        return (self._out,)


def encode(text: TextEncoding, engine: Recorder, prompts: list[str], batch: int = 1):
    ids, mask = encode_bytes(prompts, MAX_TOKENS)
    return text.encode(prompts, ids, mask, engine, batch)


def test_per_prompt_tokens_are_cached_and_equal_a_whole_batch() -> None:
    text, engine = TextEncoding(torch.device("cpu"), 8, cuda_graph=True), Recorder()
    assert not text.cuda_graph  # never on the CPU
    tokens, mask = encode(text, engine, ["a b", "cd"])
    again, _ = encode(text, engine, ["cd", "a b"])
    assert engine.rows == 2, "the second call should hit the cache for both prompts"
    whole, whole_mask = encode(
        TextEncoding(torch.device("cpu"), 0, False), Recorder(), ["a b", "cd"], 2
    )
    torch.testing.assert_close(tokens, whole, rtol=0, atol=0)
    torch.testing.assert_close(mask, whole_mask, rtol=0, atol=0)
    torch.testing.assert_close(again, whole.flip(0), rtol=0, atol=0)
    assert text.cached_prompts == ["cd", "a b"] and not text.release_graph()


def test_rows_do_not_share_the_engines_reused_buffer() -> None:
    text, engine = TextEncoding(torch.device("cpu"), 0, cuda_graph=False), Recorder()
    first, _ = encode(text, engine, ["xyz"])
    snapshot = first.clone()
    encode(text, engine, ["other"])  # overwrites the engine's buffer
    torch.testing.assert_close(first, snapshot, rtol=0, atol=0)
    assert text.cached_prompts == [] and engine.rows == 2


@pytest.mark.parametrize("size", [-1, 1.5, True])
def test_a_bad_cache_size_is_refused(size) -> None:
    with pytest.raises(InputError, match="text_cache_size="):
        TextEncoding(torch.device("cpu"), size, cuda_graph=False)
