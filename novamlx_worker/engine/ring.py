"""Sliding-window layers in the slot batch: each slot's window is a ring of columns.

A window layer (mlx-lm's RotatingKVCache, keep 0) attends to the last W positions, itself
included. Its slot buffer has C = W + RING_SLACK columns (fewer while every row is shorter:
then it is the batch's plain capacity and nothing wraps): position p lives in column p mod C.
Keys carry their RoPE position already, so a column's place in the ring does not matter; the
mask says which columns a query sees. The slack is why drafts need no rollback here either:
a verification step writes at most RING_SLACK positions, which overwrite only positions older
than any window still to be read, and a rejected draft's columns are read as positions older
than the window once the row's length is cut back (spec_batch.py cuts lengths, nothing else).
"""
from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import RotatingKVCache

RING_SLACK = 128  # > the widest step that writes a window layer: a verification of 1 + 64 drafts


def ring_columns(window: int, capacity: int) -> int:
    """A window layer's columns while the batch's plain capacity is `capacity`."""
    return min(window + RING_SLACK, capacity)


def write_columns(offset: mx.array, width: int, columns: int) -> mx.array:
    """(rows, width): where each row's step writes its positions offset..offset+width-1."""
    return (offset[:, None] + mx.arange(width)[None, :]) % columns


def ring_mask(offset: mx.array, width: int, columns: int, window: int) -> mx.array:
    """(rows, 1, width, columns): query j of a row (position offset+j) sees the columns holding
    positions offset+j-window+1 .. offset+j. Column c holds the latest position p = c (mod
    columns) at most the step's last one."""
    last = offset[:, None] + (width - 1)  # (rows, 1)
    c = mx.arange(columns)[None, :]
    pos = c + ((last - c) // columns) * columns  # (rows, columns); negative: never written
    q = offset[:, None] + mx.arange(width)[None, :]  # (rows, width)
    seen = (pos[:, None, :] <= q[:, :, None]) & (pos[:, None, :] > q[:, :, None] - window) & (pos[:, None, :] >= 0)
    return seen[:, None]


def window_view(cache, length: int, row: int = 0) -> tuple[mx.array, mx.array]:
    """Row `row` of a layer cache up to position `length`, oldest first: the last min(length,
    window) positions of a (one-row) RotatingKVCache in whatever rotation it is, or columns
    0..length-1 of plain KV."""
    if isinstance(cache, RotatingKVCache):
        k, v = cache._temporal_order(cache.keys), cache._temporal_order(cache.values)
        n = min(length, cache.max_size)
        return k[:, :, k.shape[2] - n:], v[:, :, v.shape[2] - n:]
    return cache.keys[row:row + 1, :, :length], cache.values[row:row + 1, :, :length]


def place(buffer: mx.array, slot: int, src: mx.array, length: int, window: int) -> None:
    """Write a row's window (src: its last positions up to `length`, oldest first) into its ring."""
    n = min(length, window, src.shape[2])
    cols = (mx.arange(length - n, length) % buffer.shape[2])
    buffer[slot:slot + 1, :, cols] = src[:, :, src.shape[2] - n:]


def unroll(keys: mx.array, values: mx.array, slot: int, length: int, window: int) -> RotatingKVCache:
    """One slot's window as mlx-lm's cache, oldest position first, ready to continue."""
    n = min(length, window)
    cols = mx.arange(length - n, length) % keys.shape[2]
    c = RotatingKVCache(max_size=window)
    c.keys, c.values = mx.contiguous(keys[slot:slot + 1, :, cols]), mx.contiguous(values[slot:slot + 1, :, cols])
    c.offset, c._idx = length, n
    return c
