"""Many sequences of one model decoding together: KV in fixed slots, one forward per step.

mlx-lm's BatchGenerator keeps its rows left-padded in one growing cache: every finished
row is filtered out by gathering the whole cache, every arrival is merged in by
concatenating it, and each step splits the logprobs into one array per row. At 128 rows
on an H100 those copies and per-row ops cost more than the forward itself. Here:

- each layer's keys and values live in buffers (slots, kv heads, capacity, head dim);
  row b holds `length[b]` tokens from column 0, the step's token is scattered into column
  length[b] (in place), a leaving row just frees its slot and an arriving row is copied
  into a free one. Buffers grow (or shrink) in buckets, rarely;
- attention reads each row's own columns: the ragged CUDA kernel (engine/ragged.py) on a
  GPU, a boolean mask elsewhere;
- arrivals are prefilled in groups (right-padded: causal attention never lets a real
  token see the padding after it), one chunk per step so running rows keep decoding;
- steps are pipelined like mlx-lm's generate_step: the next step is queued before this
  one's tokens are read, and rows that joined or left in between are merged in with
  `where` rather than by waiting for the queue to drain.
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.models.cache import KVCache, QuantizedKVCache, make_prompt_cache

from ..models.shape import activation_dtype, attention_shape
from ..sampling import log_probs
from . import ragged, ring, state_slots
from .kv import STATE, KVFormat, held
from .path import TokenOut, until_finish

CAPACITY_STEP = 256


def slot_count(rows: int, max_batch: int, least: int = 1) -> int:
    """How many slots `rows` live rows occupy: powers of two (few resizes), at most max_batch."""
    s = least
    while s < rows:
        s *= 2
    return min(max(s, rows), max(max_batch, rows))


class SlotKV:
    """A layer's KV for every slot; quacks like mlx-lm's caches inside the model's forward.
    `offset` is each row's write column (and RoPE position). Without the kernel, attention sees
    only the first `used` columns (the longest row's), with a mask for the shorter rows.
    keys and values are lists of parts (kv.py): one array, or packed words, scales, biases."""

    def __init__(self, keys: list[mx.array], values: list[mx.array], step: "StepIndex", fmt: KVFormat):
        self.keys, self.values, self.step, self.fmt = keys, values, step, fmt
        self.offset, self.ragged, self.lens = step.offset, step.ragged, step.lens

    def _put(self, parts: list[mx.array], new: mx.array) -> list[mx.array]:
        return [mx.put_along_axis(p, self.step.write_at(p.shape), n, axis=2) for p, n in zip(parts, self.fmt.parts(new))]

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.keys, self.values = self._put(self.keys, keys), self._put(self.values, values)
        if self.ragged:
            return self.keys[0], self.values[0]  # the kernel reads columns [0, lens) of each row itself
        k = [p[:, :, :self.step.used] for p in self.keys]
        v = [p[:, :, :self.step.used] for p in self.values]
        if self.fmt.contiguous:
            k, v = [mx.contiguous(x) for x in k], [mx.contiguous(x) for x in v]
        return (tuple(k), tuple(v)) if self.fmt.quantized else (k[0], v[0])

    def make_mask(self, n: int, return_array: bool = False, **_):
        return self.step.mask


class RingSlotKV(SlotKV):
    """A sliding-window layer's slots: rings of columns (ring.py); attention reads them whole
    under the ring's own mask."""

    def __init__(self, keys, values, step, fmt: KVFormat, window: int):
        super().__init__(keys, values, step, fmt)
        self.window, self.columns = window, keys[0].shape[2]

    def _put(self, parts: list[mx.array], new: mx.array) -> list[mx.array]:
        return [mx.put_along_axis(parts[0], self.step.write_at(parts[0].shape, self.columns), new, axis=2)]

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.keys, self.values = self._put(self.keys, keys), self._put(self.values, values)
        return self.keys[0], self.values[0]

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None, **_):
        return self.step.ring_mask(self.columns, window_size or self.window)


class QuantizedSlotKV(SlotKV):
    """Quantized slots: mlx-lm's attention sees `bits` and takes the quantized path."""

    def __init__(self, keys, values, step, fmt: KVFormat):
        super().__init__(keys, values, step, fmt)
        self.bits, self.group_size = fmt.bits, fmt.group_size


class StepIndex:
    """What every layer of one decode step shares, built once: write positions, lengths, mask.
    width: tokens each row feeds this step (1; more when drafts are verified, spec_batch.py),
    written at columns offset..offset+width-1, each attending to the columns up to its own."""

    def __init__(self, offset: mx.array, ragged: bool, used: int, width: int = 1):
        self.offset, self.ragged, self.used, self.width = offset, ragged, used, width
        self._at: dict[tuple, mx.array] = {}
        self.lens = offset + 1
        if ragged:
            self.mask = None
        elif width == 1:
            self.mask = (mx.arange(used)[None, :] < self.lens[:, None])[:, None, None, :]
        else:
            last = offset[:, None] + mx.arange(width)[None, :]  # (rows, width): each query's own column
            self.mask = (mx.arange(used)[None, None, :] <= last[:, :, None])[:, None, :, :]

    def write_at(self, shape: tuple, columns: int = 0) -> mx.array:
        """The step's write columns of every slot, shaped for one part (slots, heads, width, last);
        columns: a window layer's ring size (its positions wrap there)."""
        key = (shape[0], shape[1], shape[3], columns)
        if key not in self._at:
            cols = ring.write_columns(self.offset, self.width, columns) if columns else \
                self.offset[:, None] + mx.arange(self.width)[None, :]
            self._at[key] = mx.broadcast_to(cols[:, None, :, None], (shape[0], shape[1], self.width, shape[3]))
        return self._at[key]

    def ring_mask(self, columns: int, window: int) -> mx.array:
        key = ("mask", columns, window)
        if key not in self._at:
            self._at[key] = ring.ring_mask(self.offset, self.width, columns, window)
        return self._at[key]


@dataclass(eq=False)
class Row:
    rid: int
    sampler: object  # None: greedy
    processors: list
    stop_ids: set[int]
    max_tokens: int
    known: int  # tokens the engine knows (prompt + generated so far)
    logprobs: bool = False  # the request wants logprob rows
    n: int = 0  # tokens generated
    length: int = 0  # columns of its slot holding KV
    context: mx.array | None = None  # for logits processors: last prompt token, then generated
    history: list[int] | None = None  # rows that draft (spec_batch.py): every token so far, the last is the next input
    k: int = 0  # its current draft length


@dataclass(eq=False)
class Prefill:
    """Rows being prefilled together, one chunk per step."""
    rows: list[Row | None]  # None: removed while prefilling (its cache row is left unused)
    lasts: list[int]  # each row's last prompt token: its first decode input
    cache: list  # per-layer KVCache (B rows, right-padded)
    todo: list[list[int]]  # per row, tokens still to feed
    lengths: list[int]  # per row, real tokens in the cache when done


def pick_tokens(logits: mx.array, y: mx.array, members: list) -> tuple[mx.array, mx.array | None]:
    """The next token of each (index, row) member from the step's logits (y: the step's inputs,
    which extend each processed row's context): processors, then argmax or the row's sampler.
    Also the normalized logprobs when a row samples or asks for them (else None)."""
    processed = [(s, r) for s, r in members if r.processors]
    if processed:  # only these rows are sliced out, processed and put back
        rows = []
        for s, r in processed:
            r.context = y[s:s + 1] if r.context is None else mx.concatenate([r.context, y[s:s + 1]])
            row = logits[s:s + 1]
            for p in r.processors:
                row = p(r.context, row)
            rows.append(row.astype(logits.dtype))
        at = mx.broadcast_to(mx.array([s for s, _ in processed])[:, None], (len(rows), logits.shape[1]))
        logits = mx.put_along_axis(logits, at, mx.concatenate(rows), axis=0)
    sampled = any(r.sampler is not None for _, r in members)
    lp = None
    if sampled or any(r.logprobs for _, r in members):  # greedy rows need no normalizing
        lp = log_probs(logits.astype(mx.float32))
    tokens = mx.argmax(logits, axis=-1).astype(mx.uint32)
    return (sample_rows(tokens, lp, members) if sampled else tokens), lp


def sample_rows(tokens: mx.array, lp: mx.array, members: list) -> mx.array:
    """Greedy picks replaced by samples for (index, row) members whose row has a sampler: one
    call per group of like samplers, seeded rows alone."""
    groups: dict = {}
    for s, r in members:
        if r.sampler is not None:
            key = getattr(r.sampler, "group", None)
            groups.setdefault(key if key is not None else ("row", s), (r.sampler, []))[1].append(s)
    idx, picks = [], []
    for sampler, slots in groups.values():
        at = mx.array(slots)
        idx.append(at)
        picks.append(sampler(lp[at]).astype(tokens.dtype).reshape(-1))
    return mx.put_along_axis(tokens, mx.concatenate(idx), mx.concatenate(picks), axis=0)


def _row_of(x, i: int):
    """Row i of a cache's keys or values: an array, or a quantized cache's (packed, scales, biases)."""
    return tuple(p[i:i + 1] for p in x) if isinstance(x, (tuple, list)) else x[i:i + 1]


class Batch:
    def __init__(self, model, max_batch: int, prefill_step: int, prefill_batch: int, min_slots: int = 1,
                 kv: KVFormat = KVFormat(), drafts=None, layers: list | None = None):
        self.model = model
        layers = layers or [None] * len(model.layers)  # per layer: None (plain KV), its window or STATE (kv.py)
        self.windows = [k if isinstance(k, int) else None for k in layers]  # sliding windows: rings (ring.py)
        # SSM / convolution state (state_slots.py): per such layer, its arrays' shapes after the slot axis
        stateful = [i for i, k in enumerate(layers) if k == STATE]
        self.states = state_slots.state_shapes(model, stateful) if stateful else {}
        self.first_kv = next(i for i, k in enumerate(layers) if k != STATE)  # says what a KV slot holds (kv.slot_layers)
        self.drafts = drafts  # n-gram drafting steps (spec_batch.BatchDrafts), or None
        self.max_batch, self.prefill_step, self.prefill_batch = max_batch, prefill_step, prefill_batch
        self.min_slots = min(min_slots, max_batch)
        self.kv = kv
        self.windowed = any(self.windows)
        # the kernel reads plain KV of every layer (with it, a windowed model's batched answers
        # drifted from each alone on the GPU: TODO find out why before turning it on there)
        self.use_kernel = ragged.install(model) if not (kv.quantized or self.windowed) else False
        self.stream = mx.new_stream(mx.default_device())
        self.keys: list[list[mx.array]] = []  # per layer, its parts (kv.py)
        self.values: list[list[mx.array]] = []
        self.cap = 0  # columns of a plain layer's slot (a window layer's ring has at most that many)
        self.slots: list[Row | None] = []
        self.waiting: list[tuple[Row, list[int], list | None]] = []  # (row, tokens, cache) not started
        self.prefill: Prefill | None = None
        self.inflight = None  # (tokens, logprobs, [(slot, row)]) queued, not yet read
        self.fresh: dict[int, int] = {}  # slot -> first input of a row that joined since the last step
        self.by_rid: dict[int, Row] = {}
        self.prefilled = None  # called (row, a copy of its caches) as its prompt is in, where set

    # ---- membership ----
    def add(self, row: Row, tokens: list[int], cache: list | None) -> None:
        """Queue a row; `tokens` follow the KV already in `cache` (the last one is fed by decode)."""
        self.by_rid[row.rid] = row
        self.waiting.append((row, tokens, cache))

    def remove(self, rid: int) -> list | None:
        """Take a row out wherever it is; returns its KV (per-layer KVCache) when it has any."""
        row = self.by_rid.pop(rid, None)
        if row is None:
            return None
        for i, (r, _, cache) in enumerate(self.waiting):
            if r is row:
                del self.waiting[i]
                return cache
        if self.prefill is not None and row in self.prefill.rows:
            self.prefill.rows[self.prefill.rows.index(row)] = None
            if not any(self.prefill.rows):
                self.prefill = None
            return None  # partial and padded: nothing worth keeping
        slot = self.slots.index(row)
        self.slots[slot] = None
        self.fresh.pop(slot, None)
        return self._extract(slot, min(row.length, row.known))

    def finished(self, rid: int) -> None:
        self.by_rid.pop(rid, None)

    @property
    def active(self) -> int:
        return len(self.by_rid)

    def kv_cost(self, reserved: list[int]) -> int:
        """KV bytes rows with these reservations hold at most here: slot_count(rows) slots, each
        sized for the longest row."""
        return self._bucket(len(reserved)) * max(reserved) if reserved else 0

    def info(self) -> dict:
        """For /health: what the slot buffers hold now (read from another thread: snapshots only)."""
        keys, values, slots = list(self.keys), list(self.values), list(self.slots)
        return {"path": "slots", "slots": len(slots), "live": sum(r is not None for r in slots),
                "capacity": self.cap if keys else 0,
                "kv_bytes": sum(a.nbytes for parts in keys + values for a in parts), "kv_bits": self.kv.bits,
                "prefilling": len(self.prefill.rows) if self.prefill else 0, "waiting": len(self.waiting),
                "ragged_kernel": self.use_kernel}

    def _extract(self, slot: int, length: int) -> list | None:
        """One row's KV as mlx-lm caches (quantized ones for a quantized format)."""
        if length <= 0:
            return None
        caches = []
        for i, (keys, values, window) in enumerate(zip(self.keys, self.values, self.windows)):
            if i in self.states:
                caches.append(state_slots.row_state(keys, slot))
                continue
            if window:
                caches.append(ring.unroll(keys[0], values[0], slot, length, window))
                continue
            k = tuple(mx.contiguous(p[slot:slot + 1, :, :length]) for p in keys)
            v = tuple(mx.contiguous(p[slot:slot + 1, :, :length]) for p in values)
            if self.kv.quantized:
                c = QuantizedKVCache(group_size=self.kv.group_size, bits=self.kv.bits)
                c.keys, c.values = k, v
            else:
                c = KVCache()
                c.keys, c.values = k[0], v[0]
            c.offset = length
            caches.append(c)
        return caches

    # ---- prefill ----
    def _start_prefill(self) -> None:
        room = self.max_batch - sum(r is not None for r in self.slots)
        if room <= 0 or not self.waiting:
            return
        head, tokens, cache = self.waiting[0]
        if cache is not None or len(tokens) <= 1 or self.states:
            # a cached prefix continues alone (its own offset); so does a prompt into state, which
            # padding would run on
            group = [self.waiting.pop(0)]
        else:
            # Rows within a factor of two of the head's length (or 64 tokens) share its padded
            # chunks: padding never more than doubles anyone's prefill; the rest go next.
            lo, hi = len(tokens) // 2 - 64, 2 * len(tokens) + 64
            group, rest = [], []
            for item in self.waiting:
                fits = item[2] is None and lo <= len(item[1]) <= hi and len(group) < min(self.prefill_batch, room)
                (group if fits else rest).append(item)
            self.waiting = rest
        rows = [g[0] for g in group]
        # (window layers too prefill into plain KV, whose masks keep to the window: a rotating cache
        # would push a shorter row's window out with the padding after it; admission prices full KV)
        cache = group[0][2] or (make_prompt_cache(self.model) if self.states else [KVCache() for _ in self.model.layers])
        base = held(cache)  # (the attention layers say; a state layer keeps no count)
        self.prefill = Prefill(rows, [g[1][-1] for g in group], cache, [g[1][:-1] for g in group],
                               [base + len(g[1]) - 1 for g in group])

    def _prefill_chunk(self) -> None:
        p = self.prefill
        width = min(self.prefill_step, max(len(t) for t in p.todo))
        if width > 0:
            chunk = [t[:width] + [0] * (width - len(t[:width])) for t in p.todo]
            p.todo = [t[width:] for t in p.todo]
            self.model(mx.array(chunk), cache=p.cache)
            mx.eval([c.state for c in p.cache])
        if any(p.todo):
            return
        self.prefill = None
        for i, (row, last, length) in enumerate(zip(p.rows, p.lasts, p.lengths)):
            if row is None:
                continue
            kv = None
            if length and (self.windowed or self.states):  # each layer's positions up to length, oldest first
                kv = [c if j in self.states else ring.window_view(c, length, i) for j, c in enumerate(p.cache)]
            elif length:
                kv = [(_row_of(c.keys, i), _row_of(c.values, i)) for c in p.cache]
            slot = self._place(row, last, kv, length)
            if self.prefilled is not None and length:
                self.prefilled(row, self._extract(slot, length))

    def _place(self, row: Row, last: int, kv: list | None, length: int) -> int:
        """Put a prefilled row into a free slot."""
        slots = len(self.slots) if None in self.slots else self._bucket(len(self.slots) + 1)
        if not self.keys or slots != len(self.slots) or length + 1 > self._capacity():
            self._resize(slots, max(self._capacity(), length + 1), like=kv[self.first_kv][0] if kv else None)
        slot = self.slots.index(None)
        if kv:
            self.copy_in(slot, kv, length)
        for i in self.states if not kv else ():  # nothing fed yet: a fresh state
            state_slots.put_row(self.keys[i], slot, None)
        row.length = length
        self.slots[slot] = row
        self.fresh[slot] = last
        return slot

    # ---- buffers ----
    def copy_in(self, slot: int, kv: list, length: int) -> None:
        """Write one row's first `length` columns of KV (per layer (keys, values)) into a slot (a
        window layer: its last positions up to `length`, into its ring; a state layer: the row's
        ArraysCache)."""
        for i, layer in enumerate(kv):
            if i in self.states:
                state_slots.put_row(self.keys[i], slot, layer)
                continue
            k, v = layer
            if self.windows[i]:
                ring.place(self.keys[i][0], slot, k, length, self.windows[i])
                ring.place(self.values[i][0], slot, v, length, self.windows[i])
                continue
            for dst, src in zip(self.keys[i] + self.values[i], self.kv.parts(k) + self.kv.parts(v)):
                dst[slot:slot + 1, :, :length] = src[:, :, :length]

    def _bucket(self, n: int) -> int:
        return slot_count(n, self.max_batch, self.min_slots)

    def _capacity(self) -> int:
        return self.cap if self.keys else 0

    def _resize(self, slots: int, capacity: int, like=None) -> None:
        """New buffers of (slots, capacity), rows kept in their slots (or compacted when shrinking).
        `like`: the first row's own keys (an array, or quantized parts), which say what a slot holds."""
        capacity = -(-capacity // CAPACITY_STEP) * CAPACITY_STEP
        if self.keys:
            first = self.keys[self.first_kv]
            heads, shapes = first[0].shape[1], [(p.shape[3], p.dtype) for p in first]
        else:
            if isinstance(like, (tuple, list)):  # quantized parts: the scales say heads, groups and dtype
                _, heads, _, groups = like[1].shape
                dim, dtype = groups * self.kv.group_size, like[1].dtype
            elif like is not None:
                _, heads, _, dim = like.shape
                dtype = like.dtype
            else:
                _, heads, dim = attention_shape(self.model)
                dtype = activation_dtype(self.model)
            shapes = self.kv.part_shapes(dim, dtype)
        keep = [i for i, r in enumerate(self.slots) if r is not None]
        if slots < len(self.slots):  # compact: live rows to the front
            order = keep + [i for i, r in enumerate(self.slots) if r is None]
            self._reorder(order[:slots])
            keep = list(range(len(keep)))
        def grown(old: list[mx.array] | None, window: int | None) -> list[mx.array]:
            # a ring keeps its columns: while it has fewer than window + slack, no position has wrapped
            columns = ring.ring_columns(window, capacity) if window else capacity
            parts = [mx.zeros((slots, heads, columns, last), dt) for last, dt in shapes]
            for new, prev in zip(parts, old or []):
                n, c = min(prev.shape[0], slots), min(prev.shape[2], columns)
                new[:n, :, :c] = prev[:n, :, :c]
            return parts

        layers = range(len(self.model.layers))
        self.keys = [state_slots.resized(self.keys[i] if self.keys else None, slots, self.states[i]) if i in self.states
                     else grown(self.keys[i] if self.keys else None, self.windows[i]) for i in layers]
        self.values = [[] if i in self.states else grown(self.values[i] if self.values else None, self.windows[i])
                       for i in layers]
        self.cap = capacity
        mx.eval(self.keys, self.values)
        self.slots = (self.slots + [None] * slots)[:slots]

    def _reorder(self, order: list[int]) -> None:
        """Move slot order[j] to slot j (the queued step's rows follow)."""
        idx = mx.array(order)
        self.keys = [[p[idx] for p in parts] for parts in self.keys]
        self.values = [[p[idx] for p in parts] for parts in self.values]
        self.slots = [self.slots[i] for i in order]
        self.fresh = {order.index(s): t for s, t in self.fresh.items() if s in order}
        if self.inflight is not None:
            y, lp, members = self.inflight
            self.inflight = (y[idx], None if lp is None else lp[idx], [(order.index(s), r) for s, r in members if s in order])

    def _fit(self) -> None:
        """Give memory back once the rows that needed it are gone: slots above four times the
        live rows' bucket, or capacity above twice what the longest live row needs."""
        live = [r for r in self.slots if r is not None]
        if not live or self.fresh:
            return
        slots = self._bucket(len(live))
        need = -(-(max(r.length for r in live) + 1) // CAPACITY_STEP) * CAPACITY_STEP
        shrink_slots = len(self.slots) > max(slots * 4, self.min_slots)
        shrink_cap = self._capacity() > max(2 * need, CAPACITY_STEP)
        if shrink_slots or shrink_cap:
            self._resize(slots if shrink_slots else len(self.slots), need if shrink_cap else self._capacity())

    # ---- one step ----
    def step(self) -> list[TokenOut]:
        with mx.stream(self.stream):
            return self._step()

    def _step(self) -> list[TokenOut]:
        if self.prefill is None:
            self._start_prefill()
        if self.prefill is not None:
            self._prefill_chunk()
        self._fit()
        if self.drafts is not None and self.drafts.due(self):  # a drafting step reads its tokens at once
            out = self._read(self.inflight, keep_inputs=True)
            self.inflight = None
            return out + self.drafts.step(self)
        queued = self._queue()
        out = self._read(self.inflight)
        self.inflight = queued
        return out

    def release(self) -> None:
        """Nothing left to run: hold no KV memory while idle."""
        if not self.by_rid:
            self.keys, self.values, self.slots, self.fresh = [], [], [], {}
            if self.drafts is not None:
                self.drafts.release()
            self.waiting, self.prefill, self.inflight = [], None, None

    def _queue(self):
        """Build and start the next decode step for every occupied slot."""
        members = [(s, r) for s, r in enumerate(self.slots) if r is not None]
        if not members:
            return None
        used = max(r.length for _, r in members) + 1  # columns the longest row needs this step
        if used > self._capacity():
            self._resize(len(self.slots), self._capacity() + CAPACITY_STEP)
        n = len(self.slots)
        if self.inflight is not None:
            y = self.inflight[0]
            if y.shape[0] < n:  # the slots grew since it was queued
                y = mx.concatenate([y, mx.zeros((n - y.shape[0],), y.dtype)])
            if self.fresh:
                pick = mx.array([s in self.fresh for s in range(n)])
                y = mx.where(pick, mx.array([self.fresh.get(s, 0) for s in range(n)], dtype=y.dtype), y)
        else:
            y = mx.array([self.fresh.get(s, 0) for s in range(n)], dtype=mx.uint32)
        self.fresh = {}
        offset = mx.array([r.length if r is not None else 0 for r in self.slots], dtype=mx.int32)
        logits, self.keys, self.values = self._forward(y, offset, self.keys, self.values, used)
        for _, r in members:
            r.length += 1
        tokens, lp = pick_tokens(logits, y, members)
        mx.async_eval(tokens, self.keys, self.values, *([lp] if lp is not None else []))
        return tokens, lp, members

    def _forward(self, y: mx.array, offset: mx.array, keys: list, values: list, used: int,
                 lengths: mx.array | None = None):
        """y: each slot's input (slots,), or its inputs (slots, width) when drafts are verified
        (then the logits of every position come back, (slots, width, vocab)). lengths: where each
        slot's state stops (state_slots.py), else after every input."""
        wide = y.ndim == 2
        step = StepIndex(offset, self.use_kernel and not wide, used, y.shape[1] if wide else 1)
        slot_kv = QuantizedSlotKV if self.kv.quantized else SlotKV
        caches = [state_slots.SlotState(k, None if lengths is None else mx.array(lengths)) if i in self.states
                  else RingSlotKV(k, v, step, self.kv, w) if w else slot_kv(k, v, step, self.kv)
                  for i, (k, v, w) in enumerate(zip(keys, values, self.windows))]
        logits = self.model(y if wide else y[:, None], cache=caches)
        return (logits if wide else logits[:, -1, :]), [c.keys for c in caches], [c.values for c in caches]

    def restate(self, y: mx.array, offset: mx.array, before: list, fed: dict[int, int], used: int) -> None:
        """After a verification forward of y (slots, width): state layers folded in every input,
        so slots that keep fewer (fed: slot -> inputs kept) get the state after theirs, computed
        again from `before` (the layers' parts before that forward). See state_slots.py."""
        need = {s: c for s, c in fed.items() if c < y.shape[1]}
        if not need:
            return
        w = max(need.values())
        lengths = mx.array([need.get(s, w) for s in range(len(self.slots))], dtype=mx.int32)
        keys = [before[i] if i in self.states else k for i, k in enumerate(self.keys)]
        _, again, _ = self._forward(y[:, :w] if w > 1 else y[:, 0], offset, keys, self.values, used, lengths)
        rows = mx.array([s in need for s in range(len(self.slots))])
        for i in self.states:
            self.keys[i] = state_slots.pick_rows(rows, again[i], self.keys[i])
        mx.eval([self.keys[i] for i in self.states])

    def _read(self, inflight, keep_inputs: bool = False) -> list[TokenOut]:
        """The queued step's tokens; keep_inputs: each continuing row's token becomes its known
        next input (in `fresh`), for a step that does not take the queued tokens on the device."""
        if inflight is None:
            return []
        tokens, lp, members = inflight
        values = tokens.tolist()
        out = []
        for s, r in members:
            if s >= len(self.slots) or self.slots[s] is not r:
                continue  # left while its step was queued
            out.append(self.emit(s, r, [values[s]], lp, keep_input=keep_inputs))
        return out

    def emit(self, s: int, r: Row, tokens: list[int], lp, keep_input: bool, grow: bool = False,
             lp_rows: mx.array | None = None) -> TokenOut:
        """A row's tokens this step, cut at its finish and counted. A finished row leaves its slot
        with its KV; a continuing one's last token becomes its known next input when asked.
        grow: the step fed the kept tokens' predecessors (drafts), so its KV grows by as many."""
        n, finish = until_finish(tokens, r.n, r.max_tokens, r.stop_ids)
        kept = tokens[:n]
        r.n += n
        r.known += n
        if grow:
            r.length += len(kept)
        if r.history is not None:
            r.history += kept
        cache = None
        if finish is not None:
            self.slots[s] = None
            self.fresh.pop(s, None)
            cache = self._extract(s, min(r.length, r.known))
        elif keep_input:
            self.fresh[s] = kept[-1]
        return TokenOut(r.rid, kept, finish, cache, lp, s, None if lp_rows is None else lp_rows[:len(kept)])
