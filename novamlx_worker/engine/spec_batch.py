"""N-gram drafts inside the slot batch: rows with drafts and rows without share one forward.

A drafting step feeds every slot its next input plus, for the rows that have one, an n-gram
draft (History.propose over the row's own tokens): `width` = 1 + the longest draft, shorter rows
padded. A greedy row keeps its draft while it equals the target's argmax, a sampled one by
rejection sampling against its own sampling distribution (ngram.verify, as on the solo path:
the output distribution is exactly the target's), and each adds the target's next token; a row
that asks for logprobs gets the target's row for every kept token. A row with logits processors
(penalties, grammar, the thinking budget) is verified against its processed distribution, computed
position by position on the context each position would have (`processed`); a processor with a
`draft_room` bounds the draft's length (the thinking budget keeps drafts clear of its budget).
Rows without drafts take position 0 as a plain step would. Rejected drafts need no rollback: the
slot's length advances only over kept tokens, so their KV columns are simply written over later (a
window's ring too, ring.py). State layers (SSM, convolutions) fold in every input, so rows that kept
fewer than they were fed get their state computed again from before the step (Batch.restate).

A drafting step reads its tokens before the next forward (it must know them to draft), so it
cannot be pipelined like a plain step; where drafts do not help (no row has a match, or no
draft was kept several steps in a row) the batch decodes plain pipelined stretches of 8 to 256
steps, as the solo path does (ngram.py).
"""
from __future__ import annotations

import mlx.core as mx

from ..sampling import log_probs
from .batch import CAPACITY_STEP, Batch, pick_tokens
from .ngram import DraftStats, next_k, verify
from .path import TokenOut, until_finish


class BatchDrafts:
    def __init__(self, k_max: int, stats: DraftStats):
        self.k_max, self.stats = k_max, stats
        self.stretches = stats.stretches

    def due(self, batch: Batch) -> bool:
        """Whether this step drafts: some row may, and no plain stretch is running."""
        if self.stretches.left > 0:
            self.stretches.left -= 1
            return False
        # no row has a match (on its history up to the queued step): another plain stretch, no pause
        if not any(r is not None and r.history is not None and self._may_draft(r) for r in batch.slots):
            self.stretches.start()
            return False
        return True

    @staticmethod
    def _may_draft(r) -> bool:
        return bool(r.history.propose(1))

    @staticmethod
    def _want(r, k_max: int) -> int:
        """How many tokens to draft for a row now (its adaptive k, within its max_tokens)."""
        r.k = r.k or max(1, k_max // 2)
        want = min(r.k, r.max_tokens - r.n - 1)
        for p in r.processors:  # a processor may bound it (the thinking budget's, near its budget)
            room = getattr(p, "draft_room", None)
            limit = room(r.n) if room is not None else None
            if limit is not None:
                want = min(want, limit)
        return want

    def _drafts(self, b: Batch, members: list) -> dict[int, list[int]]:
        out = {}
        for s, r in members:
            if r.history is None:
                continue
            draft = r.history.propose(self._want(r, self.k_max))
            if draft:
                out[s] = draft
        return out

    def _kept(self, r, m: int) -> None:
        """After verification: m of the row's draft tokens were kept (a draft model follows here)."""

    def release(self) -> None:
        """The batch is empty: give back what drafting holds."""

    def step(self, b: Batch) -> list[TokenOut]:
        """One drafting step over every occupied slot (each row's next input is in b.fresh)."""
        members = [(s, r) for s, r in enumerate(b.slots) if r is not None]
        if not members:
            return []
        drafts = self._drafts(b, members)
        width = 1 + max((len(d) for d in drafts.values()), default=0)
        used = max(r.length for _, r in members) + width
        while used > b._capacity():
            b._resize(len(b.slots), b._capacity() + CAPACITY_STEP)
        rows_in = [b.fresh.get(s, 0) for s in range(len(b.slots))]
        rows = [[rows_in[s]] + drafts.get(s, []) for s in range(len(b.slots))]
        y = mx.array([row + [0] * (width - len(row)) for row in rows], dtype=mx.uint32)
        offset = mx.array([r.length if r is not None else 0 for r in b.slots], dtype=mx.int32)
        before = b.keys  # (state layers' parts: kept to recompute from, restate)
        logits, b.keys, b.values = b._forward(y if width > 1 else y[:, 0], offset, b.keys, b.values, used)
        first_logits = logits[:, 0, :] if width > 1 else logits
        first, lp = pick_tokens(first_logits, y[:, 0], [(s, r) for s, r in members if s not in drafts])
        target = mx.argmax(logits, axis=-1) if drafts else None
        mx.eval(first, *([target] if target is not None else []), b.keys, b.values)
        first, target = first.tolist(), (target.tolist() if target is not None else None)
        b.fresh = {}
        done, accepted, fed = [], 0, {}
        for s, r in members:
            draft, lp_rows = drafts.get(s), None
            if draft:
                proposed = len(draft)
                if r.processors:
                    draft, target_logits = processed(r, rows_in[s], draft, logits[s])
                    emitted = verify(draft, target_logits, r.sampler)
                else:
                    target_logits = logits[s, :len(draft) + 1]
                    emitted = verify(draft, target_logits, r.sampler, target[s])
                m = len(emitted) - 1
                self._kept(r, m)
                accepted += m
                self.stats.record(proposed, m)
                r.k = next_k(r.k, proposed, m, self.k_max)
                if r.logprobs:  # position j's logits are the target's distribution for emitted[j]
                    lp_rows = log_probs(target_logits[:len(emitted)].astype(mx.float32))
                if r.processors:  # its context: every input its KV holds (the next one is appended next step)
                    r.context = _extend(r.context, [rows_in[s]] + emitted[:-1])
            else:
                emitted = [first[s]]
            if b.states:  # inputs whose effect stays: its input and every kept token but the last (to its finish)
                fed[s] = until_finish(emitted, r.n, r.max_tokens, r.stop_ids)[0]
            done.append((s, r, emitted, lp_rows))
        if fed and width > 1:  # (before a finished row's state is taken out with it)
            b.restate(y, offset, before, fed, used)
        # each row's KV now holds its input and every kept token but the last, which is its next input
        out = [b.emit(s, r, emitted, lp, keep_input=True, grow=True, lp_rows=lp_rows) for s, r, emitted, lp_rows in done]
        if not drafts or self.stretches.after(accepted):
            self.stretches.start()
        return out


def _extend(context: mx.array | None, tokens: list[int]) -> mx.array:
    new = mx.array(tokens, dtype=mx.uint32)
    return new if context is None else mx.concatenate([context, new.astype(context.dtype)])


def processed(r, first: int, draft: list[int], logits: mx.array) -> tuple[list[int], mx.array]:
    """A processed row's target distribution at each draft position: its processors (penalties,
    grammar) called in order on the context that position would have, stopping at the first draft
    token a `rules_out` processor (the grammar) masks (it cannot be kept, and a grammar must not
    consume it); rows without one are not read position by position. Returns the draft
    cut there and the processed logits (len(draft)+1, vocab)."""
    context = _extend(r.context, [first])
    masks = any(getattr(p, "rules_out", False) for p in r.processors)  # else no position needs reading here
    out = []
    for j in range(len(draft) + 1):
        row = logits[j:j + 1]
        for p in r.processors:
            row = p(context, row)
        out.append(row.astype(logits.dtype))
        if j == len(draft):
            break
        if masks and row[0, draft[j]].item() == -float("inf"):
            draft = draft[:j]
            break
        context = _extend(context, [draft[j]])
    return draft, mx.concatenate(out)
