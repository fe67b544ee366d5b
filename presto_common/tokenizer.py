"""Prompts to text-encoder ids: the byte-level (ByT5-style) tokenizer, no vocabulary file.

A UTF-8 byte b is id b + 3, then EOS = 1, padded with PAD = 0 to a static `max_tokens` (the text
length S every engine is built for). Never truncates: an overlong prompt is an error.
"""

from __future__ import annotations

import numpy as np

from presto_common.errors import ConfigError, InputError

# ByT5 special ids (Xue et al. 2022, HF ByT5Tokenizer): a byte b is id b + 3.
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2  # reserved; every byte has its own id, so it never occurs
BYTE_OFFSET = 3


def encode_bytes(prompts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """ids (B, S) int64 and validity mask (B, S) bool, S = max_tokens (EOS included).

    Raises InputError for no prompts, a non-string, an empty prompt or one too long to fit.

    >>> ids, mask = encode_bytes(["ab"], 4)
    >>> ids.tolist(), mask.tolist()
    ([[100, 101, 1, 0]], [[True, True, True, False]])
    """
    if max_tokens < 2:
        raise ConfigError(f"max_tokens={max_tokens} must be >= 2 (one byte and the EOS)")
    if isinstance(prompts, str) or not prompts:
        raise InputError(f"prompts={prompts!r}; expected a non-empty list of strings")
    ids = np.full((len(prompts), max_tokens), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(prompts), max_tokens), dtype=bool)
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InputError(f"prompt {i} is {prompt!r}; expected a string")
        if not prompt.strip():
            raise InputError(
                f"prompt {i} is {prompt!r}, which is empty; describe the music in words, "
                "e.g. 'upbeat funk with slap bass'"
            )
        try:
            data = prompt.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError(
                f"prompt {i} holds {prompt[err.start : err.end]!r}, which is not valid Unicode text "
                "(a lone surrogate); pass the prompt as UTF-8 text"
            ) from None
        if len(data) + 1 > max_tokens:
            raise InputError(
                f"prompt {i} is {len(data)} UTF-8 bytes, but at most {max_tokens - 1} fit "
                f"(max_tokens={max_tokens} including EOS); shorten the prompt"
            )
        ids[i, : len(data)] = np.frombuffer(data, dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
        ids[i, len(data)] = EOS_ID
        mask[i, : len(data) + 1] = True
    return ids, mask
