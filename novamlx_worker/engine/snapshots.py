"""Prefix reuse for models whose caches cannot be cut into blocks: sliding-window layers
(RotatingKVCache) and recurrent state (ArraysCache: SSM, short convolutions), mixed per layer
with plain KV in hybrid models.

Their state at position n says nothing about position m < n, so it is kept whole: at the end
of each prompt (the last prompt token is fed by decoding) and at the end of each answer. A
new prompt that extends a kept token sequence restores a copy of its state and prefills only
the rest: an agent's resent conversation (previous prompt + answer + a new turn) reuses all of
it. Least recently used states go first when the byte budget is full.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import mlx.core as mx

from .kv import held


def clone(cache: list) -> list:
    """A copy of every layer's cache whose arrays are new objects: caches write in place
    (a rotating buffer, a KV buffer with room), so a kept state must never be shared."""
    out = []
    for c in cache:
        new = copy.copy(c)
        for name, v in vars(c).items():
            if isinstance(v, mx.array):
                setattr(new, name, mx.array(v))
            elif isinstance(v, list):
                setattr(new, name, [mx.array(x) if isinstance(x, mx.array) else x for x in v])
        out.append(new)
    return out


def nbytes(cache: list) -> int:
    total = 0
    for c in cache:
        for v in vars(c).values():
            if isinstance(v, mx.array):
                total += v.nbytes
            elif isinstance(v, list):
                total += sum(x.nbytes for x in v if isinstance(x, mx.array))
    return total


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    tokens_saved: int = 0
    evictions: int = 0


class Snapshots:
    def __init__(self, capacity_bytes: int):
        self.capacity = capacity_bytes
        self.entries: OrderedDict[tuple, tuple[list, int]] = OrderedDict()  # tokens -> (cache, bytes)
        self.bytes = 0
        self.stats = Stats()

    def store(self, tokens: list[int], cache: list) -> None:
        key = tuple(tokens)
        if not key or self.capacity <= 0 or key in self.entries:
            if key in self.entries:
                self.entries.move_to_end(key)
            return
        kept = clone(cache)
        mx.eval([v for c in kept for v in vars(c).values() if isinstance(v, mx.array)])
        size = nbytes(kept)
        if size > self.capacity:
            return
        self.entries[key] = (kept, size)
        self.bytes += size
        while self.bytes > self.capacity:
            _, (_, dropped) = self.entries.popitem(last=False)
            self.bytes -= dropped
            self.stats.evictions += 1

    def keep(self, tokens: list[int], cache: list) -> None:
        """Keep a state under the tokens it holds: its attention layers' offset says how many
        (BatchGenerator has fed a finished row's last token already); a state whose count
        cannot be read (no attention layer) is not kept."""
        n = held(cache)
        if 0 < n <= len(tokens):
            self.store(tokens[:n], cache)

    def _longest(self, tokens: list[int]) -> tuple | None:
        best = None
        for key in self.entries:
            if len(key) < len(tokens) and (best is None or len(key) > len(best)) and tuple(tokens[:len(key)]) == key:
                best = key
        return best

    def peek(self, tokens: list[int]) -> int:
        """How many tokens `match` would restore now (no stats, no reordering)."""
        best = self._longest(tokens)
        return len(best) if best else 0

    def match(self, tokens: list[int]) -> tuple[int, list | None]:
        """(tokens restored, a copy of the state after them) for the longest kept sequence that
        `tokens` extends by at least one token; (0, None) when none does."""
        best = self._longest(tokens)
        if best is None:
            self.stats.misses += 1
            return 0, None
        self.entries.move_to_end(best)
        self.stats.hits += 1
        self.stats.tokens_saved += len(best)
        return len(best), clone(self.entries[best][0])

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def snapshot(self) -> dict:
        return {"kind": "state snapshots", "entries": len(self.entries), "bytes": self.bytes,
                "hits": self.stats.hits, "misses": self.stats.misses, "tokens_saved": self.stats.tokens_saved,
                "evictions": self.stats.evictions}
