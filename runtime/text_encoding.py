"""Prompts to T5 tokens on one device, the way the runtime encodes them.

A build with a batch-1 text encoder encodes prompt by prompt and keeps each prompt's tokens (the
`cache_size` prompts used last), so a take's conditioning is the same in any batch and a repeated
prompt costs nothing. With `cuda_graph` on CUDA that encoder runs in a CUDA graph of its own,
captured on first use: at batch 1 its ~210 kernels cost more to launch one by one than to run
(1.9 ms a prompt against 0.64 ms of kernels on the H200, c1e01eb). A build without a batch-1
encoder encodes a request's prompts at once through its batch-B encoder, uncached.

`Pipeline.encode_text` is the entry point; it finds the engine and holds the pipeline's lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from presto_common.errors import InputError
from runtime.engines import Engine
from runtime.graphs import CapturedChain


class TextEncoding:
    """The prompt cache and the captured batch-1 encoder of one pipeline."""

    def __init__(self, device: torch.device, cache_size: int, cuda_graph: bool) -> None:
        """cache_size: prompts whose tokens are kept (0: none); cuda_graph: capture on CUDA."""
        if isinstance(cache_size, bool) or not isinstance(cache_size, int):
            raise InputError(f"text_cache_size={cache_size!r} must be an integer >= 0")
        if cache_size < 0:
            raise InputError(f"text_cache_size={cache_size} must be >= 0 (0: no cache)")
        self.device = device
        self.cache_size = cache_size
        self.cuda_graph = cuda_graph and device.type == "cuda"
        self._cache: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()  # LRU
        self._graph: CapturedChain | None = None

    @property
    def cached_prompts(self) -> list[str]:
        """The prompts whose tokens are kept, least recently used first."""
        return list(self._cache)

    def encode(
        self,
        prompts: Sequence[str],
        ids: np.ndarray,
        mask: np.ndarray,
        engine: Engine,
        engine_batch: int,
    ) -> tuple[Tensor, Tensor]:
        """Tokens (B, S, D) and mask (B, S) on the device for B prompts, from their byte ids and
        mask (B, S) (`encode_bytes`), through `engine` built at `engine_batch` (1, or B)."""
        if engine_batch != 1:  # no batch-1 encoder: the whole batch at once, uncached
            dev_mask = torch.from_numpy(mask).to(self.device)
            (tokens,) = engine(torch.from_numpy(ids).to(self.device), dev_mask)
            return tokens, dev_mask
        rows = []
        for i, prompt in enumerate(prompts):
            row = self._cache.get(prompt)
            if row is None:
                row_mask = torch.from_numpy(mask[i : i + 1]).to(self.device)
                row_ids = torch.from_numpy(ids[i : i + 1]).to(self.device)
                row = (self._encode_one(engine, row_ids, row_mask), row_mask)
                self._cache[prompt] = row
            self._cache.move_to_end(prompt)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            rows.append(row)
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    def _encode_one(self, engine: Engine, ids: Tensor, mask: Tensor) -> Tensor:
        """One prompt's tokens (1, S, D) through the batch-1 encoder, in a tensor of its own."""
        if not self.cuda_graph:
            (tok,) = engine(ids, mask)
            return tok.clone()  # an engine may reuse its output buffer
        if self._graph is None:
            self._graph = CapturedChain(engine, (ids, mask))
        (tok,) = self._graph.replay((ids, mask))  # replay returns copies
        return tok

    def release_graph(self) -> bool:
        """Drop the captured encoder and its memory pool; True if there was one."""
        had, self._graph = self._graph is not None, None
        return had
