"""How the takes of a request are packed into a build's batch buckets.

A request is N takes (`Take`: prompt, seed, BPM, width) of one duration. The build has buckets at
some batch sizes for that duration; `plan(N, batches)` picks the batch of each engine call, and
`pack` cuts the takes into those chunks, padding a short last chunk with copies of its last take
(the padding rows are run and dropped). Each take draws its noise from its own seed's generator
(`presto_common.noise`), so a take is the same in any chunk, padded or not, as alone:

    >>> plan(3, [1, 2])
    [2, 1]
    >>> [(len(chunk), real) for chunk, real in pack([Take("a", s) for s in range(3)], [2, 2])]
    [(2, 2), (2, 1)]

`check_take` is the one rule of what a take may hold; `Pipeline.check_take` applies it with the
build's limits before any work, so a server can refuse one bad request and run the others.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from presto_common.cli import check_width
from presto_common.errors import InputError, ShapeError
from presto_common.noise import check_seed
from presto_common.tokenizer import encode_bytes


@dataclass(frozen=True)
class Take:
    """One take of a request: what to play, its noise seed, tempo and stereo width."""

    prompt: str  # text describing the music (UTF-8, at most the build's max_tokens - 1 bytes)
    seed: int  # noise seed in [0, 2**63 - 1]; the take depends on it only, not on its batch
    bpm: float = 120.0  # beats per minute, within the manifest's bpm_range
    width: float = 1.0  # stereo side gain in presto_common.cli.WIDTH_RANGE (1 the model's, 0 mono)


def check_take(take: Take, *, max_tokens: int, bpm_range: tuple[float, float]) -> Take:
    """`take` with bpm and width as floats, if every field fits the build; InputError otherwise.

    The messages are the CLI's: the prompt's from `encode_bytes`, the seed's from `check_seed`,
    the width's from `check_width`.
    """
    if not isinstance(take, Take):
        raise InputError(f"take={take!r:.80} must be a runtime.Take(prompt, seed, bpm, width)")
    encode_bytes([take.prompt], max_tokens)  # a non-str, empty, invalid or overlong prompt
    check_seed(take.seed)
    for name, value in (("bpm", take.bpm), ("width", take.width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(f"{name}={value!r:.80} must be a number, not {type(value).__name__}")
    lo, hi = bpm_range
    if not (math.isfinite(take.bpm) and lo <= take.bpm <= hi):
        raise InputError(f"bpm={take.bpm} is outside [{lo:g}, {hi:g}]; pass a BPM in that range")
    width = check_width(take.width)
    return Take(take.prompt, take.seed, float(take.bpm), width)


def plan(n: int, batches: Sequence[int]) -> list[int]:
    """The batch size of each engine call that runs n takes on buckets at `batches`, largest first.

    The plan runs the fewest rows (takes plus padding), then makes the fewest calls. So padding is
    less than the smallest batch, and only the last (smallest) chunk is padded. This is better
    than filling the largest batch first and padding the remainder into the smallest batch that
    holds it: with batches (1, 2, 64) and n = 3 that pads 61 rows where (2, 1) pads none; with
    (2, 3) and n = 4, greedy runs (3, 2) where (2, 2) pads nothing; with (4, 8) and n = 7,
    (4, 4) makes two calls where (8) makes one for the same rows. The runtime knows no timings,
    so it never trades rows for calls: with (1, 8) and n = 7 it makes seven batch-1 calls.

    >>> plan(5, [1, 2]), plan(7, [4, 8]), plan(3, [1, 2, 64]), plan(4, [2, 3])
    ([2, 2, 1], [8], [2, 1], [2, 2])
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n={n!r} takes; expected an integer >= 1")
    sizes = sorted(set(batches), reverse=True)
    if not sizes or sizes[-1] < 1:
        raise ShapeError(f"batches={list(batches)}; expected built batch sizes >= 1")
    top = sizes[0]
    # An optimal plan holds fewer than `top` smaller chunks: any `top` of them have a subset whose
    # sum is a multiple of top, which fewer top-chunks would replace. So those sum to at most
    # (top - 1)**2, and while more takes than that remain, the plan holds another top-chunk.
    head = max(0, -(-(n - (top - 1) ** 2) // top))
    rest = n - head * top
    # Fewest calls that sum to exactly m rows, for m up to rest + top - 1 (padding < top).
    calls, last = [0] + [math.inf] * (rest + top), [0] * (rest + top + 1)
    for m in range(1, len(calls)):
        for size in sizes:  # largest first: on a tie the larger chunk is kept
            if size <= m and calls[m - size] + 1 < calls[m]:
                calls[m], last[m] = calls[m - size] + 1, size
    m = next(m for m in range(rest, len(calls)) if calls[m] < math.inf) if rest else 0
    tail = []
    while m:
        tail.append(last[m])
        m -= last[m]
    return [top] * head + sorted(tail, reverse=True)


def pack(takes: Sequence[Take], chunks: Sequence[int]) -> list[tuple[tuple[Take, ...], int]]:
    """`takes` cut in order into chunks of the sizes `chunks` (from `plan`), each as (its takes,
    padded to the chunk's size with copies of its last real take; how many are real)."""
    packed, start = [], 0
    for size in chunks:
        real = takes[start : start + size]
        if not real:
            break
        packed.append((tuple(real) + (real[-1],) * (size - len(real)), len(real)))
        start += size
    if start < len(takes) or len(packed) < len(chunks):
        raise ShapeError(
            f"chunks {list(chunks)} do not hold {len(takes)} takes with a real take in each; "
            "pass plan(len(takes), batches)"
        )
    return packed
