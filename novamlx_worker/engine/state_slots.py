"""Recurrent state (SSM, short convolutions: mlx-lm's ArraysCache) in the slot batch.

A state layer's slot buffers are its state arrays with the slots first (slots, ...): a step
replaces them whole, so nothing is written in place and a leaving row just leaves its row.
Such a state has folded in every input it was fed, so a verification step (several inputs per
row) cannot be cut back by length as KV can: the state from before the step is kept (arrays
are immutable, a reference is enough) and, for rows that kept fewer inputs than they were fed,
recomputed from it in a second forward whose `lengths` make each row's state stop at its own
count (mlx-lm's hybrid models honour ArraysCache.lengths: it is how its BatchGenerator pads).
A row's KV columns are written again there with the same values, and ignored.
"""
from __future__ import annotations

import inspect
import sys

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache, make_prompt_cache


def honours_lengths(model) -> bool:
    """Whether the model's state layers stop each row's state at ArraysCache.lengths (the models
    mlx-lm batches with padding do; a state that cannot be stopped mid-step is not slotted)."""
    module = sys.modules.get(type(model).__module__)
    try:
        return module is not None and "cache.lengths" in inspect.getsource(module)
    except (OSError, TypeError):
        return False


def state_shapes(model, layers: list[int]) -> dict[int, list[tuple[tuple, object]]]:
    """Per state layer, (shape after the slot axis, dtype) of each of its arrays: read off one
    token's forward (the layers make their state on first use)."""
    cache = make_prompt_cache(model)
    model(mx.array([[0]]), cache=cache)
    mx.eval([a for i in layers for a in cache[i].cache if a is not None])
    return {i: [(a.shape[1:], a.dtype) for a in cache[i].cache] for i in layers}


class SlotState(ArraysCache):
    """A state layer's slots inside the model's forward: an ArraysCache over every slot; `keys`
    (the batch's name for a layer's parts) are its arrays after the forward."""

    def __init__(self, parts: list[mx.array], lengths: mx.array | None):
        super().__init__(len(parts))
        self.cache = list(parts)
        self.lengths = lengths

    @property
    def keys(self) -> list[mx.array]:
        return self.cache

    @property
    def values(self) -> list[mx.array]:
        return []


def resized(old: list[mx.array] | None, slots: int, shapes: list) -> list[mx.array]:
    """A state layer's arrays for `slots` slots, the rows that fit kept."""
    parts = [mx.zeros((slots, *shape), dt) for shape, dt in shapes]
    for new, prev in zip(parts, old or []):
        n = min(prev.shape[0], slots)
        new[:n] = prev[:n]
    return parts


def row_state(parts: list[mx.array], slot: int) -> ArraysCache:
    """One slot's state as mlx-lm's cache."""
    c = ArraysCache(len(parts))
    c.cache = [mx.contiguous(p[slot:slot + 1]) for p in parts]
    return c


def put_row(parts: list[mx.array], slot: int, cache: ArraysCache | None) -> None:
    """Write a row's state into its slot (zeros: a row with nothing fed yet)."""
    for j, p in enumerate(parts):
        src = cache.cache[j] if cache is not None else None
        p[slot:slot + 1] = src if src is not None else mx.zeros((1, *p.shape[1:]), p.dtype)


def pick_rows(rows: mx.array, new: list[mx.array], old: list[mx.array]) -> list[mx.array]:
    """new where `rows` (a bool per slot) is true, else old."""
    return [mx.where(rows.reshape(-1, *[1] * (n.ndim - 1)), n, o) for n, o in zip(new, old)]
