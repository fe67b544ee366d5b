"""Prompts to text-encoder ids: the byte-level (ByT5-style) tokenizer the manifest names.

The same ids as `presto_ref.text.ByteTokenizer` (tests/runtime/test_tokenizer.py compares them): a
UTF-8 byte b is id b + 3, then EOS = 1, padded with 0 to the static max_tokens of the engines.
"""

from __future__ import annotations

import numpy as np

from runtime.errors import InputError

PAD_ID, EOS_ID, BYTE_OFFSET = 0, 1, 3


def encode_prompts(prompts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """ids (B, max_tokens) int64 and mask (B, max_tokens) bool; refuses empty or overlong prompts."""
    if isinstance(prompts, str) or not prompts:
        raise InputError(f"prompts={prompts!r}; expected a non-empty list of strings")
    ids = np.full((len(prompts), max_tokens), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(prompts), max_tokens), dtype=bool)
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(
                f"prompt {i} is {prompt!r}, which is empty; describe the music in words, "
                "e.g. 'upbeat funk with slap bass'"
            )
        data = prompt.encode("utf-8")
        if len(data) + 1 > max_tokens:
            raise InputError(
                f"prompt {i} is {len(data)} UTF-8 bytes, but at most {max_tokens - 1} fit "
                f"(max_tokens={max_tokens} including EOS); shorten the prompt"
            )
        ids[i, : len(data)] = np.frombuffer(data, dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
        ids[i, len(data)] = EOS_ID
        mask[i, : len(data) + 1] = True
    return ids, mask
