"""Draft-model drafts inside the slot batch: a smaller model with the target's tokenizer
proposes for every drafting row at once, and the target verifies them all in its drafting
step (spec_batch.py: greedy rows by argmax, sampled ones by rejection sampling, processed
and logprob rows as there).

The draft keeps its own KV in slot buffers like the target's (batch.py), a slot per drafting
row (by row id, so the target's slot moves do not concern it), each holding a prefix of the
row's history. A drafting step:
1. seats new rows (their prompt prefilled alone, from the draft's own prefix cache where it
   holds a prefix, then copied into a slot) and frees the slots of rows that left;
2. catches every row up on the tokens its KV lacks (the last kept tokens, or a plain
   stretch's), in one padded forward of at most CATCH_UP columns (more in earlier chunks);
3. decodes K tokens greedily for all rows together, each forward fed the previous argmax on
   the device: one read at the end.
After verification a row's KV is cut back to what is still true by its length alone (as the
target's): rejected drafts are written over later, so no cache kind needs trimming here.
"""
from __future__ import annotations

import mlx.core as mx
from .batch import CAPACITY_STEP, Batch, slot_count
from .draft import prefill_draft
from .kv import STATE, slot_layers
from .ring import window_view
from .ngram import DraftStats
from .spec_batch import BatchDrafts

CATCH_UP = 16  # widest catch-up forward (columns per row)


class ModelDrafts(BatchDrafts):
    def __init__(self, k_max: int, stats: DraftStats, model, max_batch: int, prefill_step: int, prefix=None):
        super().__init__(k_max, stats)
        self.model, self.prefill_step, self.prefix = model, prefill_step, prefix  # prefix: the draft's prefix cache
        # its slot buffers and slot forward (a windowed draft's window layers in rings: rows are
        # cut back by length alone there too)
        self.kv = Batch(model, max_batch, prefill_step, 1, layers=slot_layers(model))
        self.slot: dict[int, int] = {}  # row id -> its slot in the draft's buffers
        self.held: dict[int, int] = {}  # row id -> tokens of its history the draft's KV holds
        self.fed: dict[int, tuple[int, int]] = {}  # this step: row id -> (history length, tokens drafted)

    @staticmethod
    def _may_draft(r) -> bool:
        return True  # a model always has a proposal

    @staticmethod
    def serves(model) -> bool:
        """Whether a draft model's caches fit slots cut back by length alone: plain KV and sliding
        windows (not SSM state)."""
        layers = slot_layers(model)
        return layers is not None and STATE not in layers

    def release(self) -> None:
        self.kv.keys, self.kv.values, self.kv.slots = [], [], []
        self.slot, self.held, self.fed = {}, {}, {}

    def _drafts(self, b: Batch, members: list) -> dict[int, list[int]]:
        rows = [(s, r) for s, r in members if r.history is not None]
        self._free({r.rid for _, r in rows})
        want = {s: self._want(r, self.k_max) for s, r in rows}
        rows = [(s, r) for s, r in rows if want[s] > 0]
        if not rows:
            return {}
        k = max(want.values())
        for _, r in rows:
            if r.rid not in self.slot:
                self._seat(r)
        x = self._catch_up([r for _, r in rows], k)
        drafted = [x]
        lengths = mx.array(self._lengths(), dtype=mx.int32)
        for _ in range(k - 1):
            used = int(max(self.held.values())) + len(drafted)
            logits, self.kv.keys, self.kv.values = self.kv._forward(x, lengths + len(drafted) - 1, self.kv.keys,
                                                                     self.kv.values, used)
            x = mx.argmax(logits, axis=-1).astype(mx.uint32)
            drafted.append(x)
        tokens = mx.stack(drafted, axis=1).tolist()
        out = {}
        for s, r in rows:
            out[s] = tokens[self.slot[r.rid]][:want[s]]
            self.fed[r.rid] = (len(r.history), k)  # the catch-up fed it all; k-1 drafts went in after
        return out

    def _kept(self, r, m: int) -> None:
        """Its KV holds the history it was drafted from plus k-1 drafts: the first m of them stay."""
        before, k = self.fed.pop(r.rid)
        self.held[r.rid] = before + min(m, k - 1)

    # ---- slots ----
    def _lengths(self) -> list[int]:
        at = [0] * len(self.kv.slots)
        for rid, s in self.slot.items():
            at[s] = self.held[rid]
        return at

    def _free(self, live: set[int]) -> None:
        """Free the slots of rows that left; give back capacity a long row that left needed."""
        gone = [rid for rid in self.slot if rid not in live]
        for rid in gone:
            self.kv.slots[self.slot.pop(rid)] = None
            self.held.pop(rid, None)
            self.fed.pop(rid, None)
        if gone and not self.slot:
            self.release()
        elif gone:
            need = max(self.held.values()) + CATCH_UP + self.k_max + 1
            if self.kv._capacity() > max(2 * need, CAPACITY_STEP):
                self.kv._resize(len(self.kv.slots), need)  # (slots stay where they are)

    def _room(self, columns: int) -> None:
        """Capacity for `columns` in every slot."""
        kv = self.kv
        if columns > kv._capacity():
            kv._resize(len(kv.slots), -(-columns // CAPACITY_STEP) * CAPACITY_STEP)

    def _seat(self, r) -> None:
        """A slot for a row new to drafting, its history but the last token prefilled alone."""
        kv = self.kv
        if None not in kv.slots:
            kv._resize(slot_count(len(kv.slots) + 1, kv.max_batch), max(kv._capacity(), CAPACITY_STEP))
        slot = kv.slots.index(None)
        kv.slots[slot], self.slot[r.rid], self.held[r.rid] = r, slot, 0
        prompt = list(r.history[:-1])
        if not prompt:
            return
        cache = prefill_draft(self.model, prompt, self.prefix, self.prefill_step)
        self._room(len(prompt) + CATCH_UP)
        kv.copy_in(slot, [window_view(c, len(prompt)) for c in cache], len(prompt))
        self.held[r.rid] = len(prompt)

    def _catch_up(self, rows: list, k: int) -> mx.array:
        """Feed each row what its KV lacks of its history (at least its next input); returns the
        draft's first token for every slot (the argmax after each row's last history token)."""
        kv = self.kv
        behind = {self.slot[r.rid]: list(r.history[self.held[r.rid]:]) for r in rows}
        while True:
            width = min(CATCH_UP, max(len(t) for t in behind.values()))
            last = all(len(t) <= width for t in behind.values())
            chunk = {s: t[:width] if last else t[:min(width, len(t) - 1)] for s, t in behind.items()}
            lengths = self._lengths()
            self._room(max(lengths) + width + k)
            y = mx.array([chunk.get(s, []) + [0] * (width - len(chunk.get(s, []))) for s in range(len(kv.slots))],
                         dtype=mx.uint32)
            logits, kv.keys, kv.values = kv._forward(y if width > 1 else y[:, 0], mx.array(lengths, dtype=mx.int32),
                                                     kv.keys, kv.values, max(lengths) + width)
            for s, t in chunk.items():
                self.held[kv.slots[s].rid] += len(t)
                behind[s] = behind[s][len(t):]
            if last:
                break
            mx.eval(kv.keys, kv.values)
        if width == 1:
            return mx.argmax(logits, axis=-1).astype(mx.uint32)
        at = mx.array([max(len(chunk.get(s, [])) - 1, 0) for s in range(len(kv.slots))])[:, None, None]
        return mx.argmax(mx.take_along_axis(logits, at, axis=1)[:, 0], axis=-1).astype(mx.uint32)
