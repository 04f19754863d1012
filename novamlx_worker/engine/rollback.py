"""Taking back what a verification forward fed beyond the kept tokens, in every cache kind.

Plain and quantized KV, and a sliding window that has not wrapped, are cut back by their
offset. A wrapped window has written over its oldest entries, and recurrent state (SSM, short
convolutions) has folded the rejected tokens in, so neither can be cut: for those layers a copy
is kept before the forward (snapshots.clone), and after a rejection they are restored, the
other layers cut back to the same point, and the kept tokens fed again. A fully accepted draft
costs nothing more; a rejection costs one forward over the kept tokens.
"""
from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import RotatingKVCache

from .snapshots import clone


def _cuttable(c, n: int) -> bool:
    """Whether a layer's cache can be cut back after n more tokens."""
    if isinstance(c, RotatingKVCache):
        return c.offset + n < c.max_size  # not wrapped yet
    return c.is_trimmable()


def checkpoint(cache: list, n: int) -> list | None:
    """Before feeding n tokens: None where every layer can be cut back after them, else a copy of
    each layer that cannot (None for those that can)."""
    cuttable = [_cuttable(c, n) for c in cache]
    if all(cuttable):
        return None
    return [None if ok else clone([c])[0] for c, ok in zip(cache, cuttable)]


def take_back(model, cache: list, saved: list | None, fed: list[int], keep: int) -> None:
    """After a forward fed `fed`, leave `cache` (in place) as if only fed[:keep] had been fed."""
    drop = len(fed) - keep
    if drop <= 0:
        return
    if saved is None:
        for c in cache:
            c.trim(drop)
        return
    for i, copy in enumerate(saved):
        if copy is None:
            cache[i].trim(len(fed))
        else:
            cache[i] = copy
    if keep:
        model(mx.array(fed[:keep])[None], cache=cache)
