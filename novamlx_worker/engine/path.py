"""The contract every decode path keeps (Solo+Batch through Runner, mlx-lm's BatchGenerator,
the vision path, speculative decoding next): what the engine may call, what a step returns,
and the one rule for when a row ends.

A step returns, per row that advanced, a list of tokens: one for plain decoding, several
when a draft's tokens are accepted at once. A path never decides text; stop strings,
reasoning and tool calls are output.py's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import mlx.core as mx


def finish_for(token: int, generated: int, max_tokens: int, stop_ids: set[int]) -> str | None:
    """Why a row ends at this token: "stop" (a stop token), "length" (its max_tokens-th), or None."""
    if token in stop_ids:
        return "stop"
    return "length" if generated >= max_tokens else None


def until_finish(tokens: list[int], generated: int, max_tokens: int, stop_ids: set[int]) -> tuple[int, str | None]:
    """How many of a row's next tokens it keeps (through the one it finishes at, after
    `generated` so far), and why it finishes (None: it goes on)."""
    for j, token in enumerate(tokens):
        finish = finish_for(token, generated + j + 1, max_tokens, stop_ids)
        if finish is not None:
            return j + 1, finish
    return len(tokens), None


@dataclass(eq=False)
class TokenOut:
    """The tokens one row produced in one step, from whichever path decoded them."""
    rid: int
    tokens: list[int]
    finish_reason: str | None  # of the last token: "stop", "length", or None
    cache: list | None  # per-layer KV of a row that just finished
    lp: mx.array | None = field(repr=False, default=None)  # its logprob row, or the step's rows (then `row`)
    row: int | None = None
    lp_rows: mx.array | None = field(repr=False, default=None)  # [tokens, vocab]: a row for every token (drafts)

    @property
    def token(self) -> int:
        return self.tokens[-1]

    @property
    def logprobs(self) -> mx.array:
        """The last token's full normalized row, read only when a request asks."""
        return self.lp if self.row is None else self.lp[self.row]

    def logprob_rows(self) -> list:
        """A normalized row per token: every one from a drafting step, else the last one's only
        (the others None)."""
        if self.lp_rows is not None:
            return [self.lp_rows[i] for i in range(len(self.tokens))]
        return [None] * (len(self.tokens) - 1) + [self.logprobs]


class DecodePath(Protocol):
    """What the engine calls on a model's decode path."""
    cacheable: bool  # its rows' KV can go to and come from the prefix cache

    @property
    def active(self) -> int: ...  # rows it holds (waiting, prefilling or decoding)

    @property
    def stream(self): ...  # the MLX stream its forwards are queued on

    def add(self, seq, cache: list | None = None) -> int: ...  # a row id; with a cache, only the rest is prefilled

    def remove(self, rid: int) -> list | None: ...  # out, wherever it is; its KV when it has any

    def finished(self, rid: int) -> None: ...  # it returned a finish reason and has already left

    def step(self) -> list[TokenOut]: ...

    def kv_cost(self, reserved: list[int]) -> int: ...  # KV bytes rows with these reservations hold here

    def peek(self, tokens: list[int]) -> int: ...  # prompt tokens its own kept state would restore (not the prefix cache's)

    def info(self) -> dict: ...  # for /health
