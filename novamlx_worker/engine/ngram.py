"""N-gram (prompt lookup) speculative decoding for a lone greedy sequence.

Coding agents and edit requests repeat long spans of their prompt. The last n tokens of the
sequence are looked up in everything it has seen (longest n first, latest occurrence); the k
tokens that followed there are a draft. One forward over [next input, draft...] scores them
all; the draft is accepted while it equals the target's argmax, and the target's own token
at the first mismatch (or after the last accepted one) comes free. Rejected positions are
trimmed from the cache, so the KV always equals a plain decode's: the output is exactly the
target's greedy output, several tokens per forward when the draft is right. Caches that cannot be
trimmed (a wrapped sliding window, SSM state) are restored and fed the kept tokens (rollback.py).

A sampled row stays exact by rejection sampling: a draft token d (proposed with certainty) is
kept with probability p(d) under the distribution the sampler draws from (after top-k, top-p,
min-p and temperature); at the first rejection the token is drawn from p without d, and after
a fully accepted draft from p: every emitted token has the target's distribution.

Here: the solo path (one sequence on a model; rows without logits processors or logprobs), any
cache kind. Rows in the slot batch draft in spec_batch.py; draft models in draft.py / draft_batch.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx

from ..sampling import log_probs
from .path import finish_for, until_finish
from .rollback import checkpoint, take_back
from .solo import Solo


class History(list):
    """A sequence's tokens (the last is its next input) with an index of its n-grams. propose(k):
    up to k tokens that followed the latest earlier occurrence of the last n tokens (longest n
    first). A draft costs a few dict lookups instead of a scan of the context: at 150 tok/s on a GPU a step has
    ~7 ms, and a Python scan of a few thousand tokens took a noticeable share of it.
    Keys are the n-grams' hashes: a collision can only propose a wrong draft, which verification
    rejects, so the output never depends on it."""

    WINDOW = 16384  # of a long prompt, only the last this many tokens are indexed (time and memory at insert)

    def __init__(self, tokens=(), n_max: int = 4, n_min: int = 2):
        super().__init__()
        self.n_max, self.n_min = n_max, n_min
        self.after: dict[int, int] = {}  # n-gram hash -> where the tokens after its latest non-tail occurrence begin
        tokens = list(tokens)
        head = max(len(tokens) - self.WINDOW, 0)
        super().extend(tokens[:head])
        self.extend(tokens[head:], start=head)

    def extend(self, tokens, start: int = 0) -> None:
        for t in tokens:
            end = len(self)  # the n-grams ending here stop being the tail now
            for n in range(self.n_min, min(self.n_max, end - start) + 1):
                self.after[hash(tuple(self[end - n:end]))] = end
            super().append(t)

    def append(self, token: int) -> None:
        self.extend([token])

    def __iadd__(self, tokens):
        self.extend(tokens)
        return self

    def propose(self, k: int) -> list[int]:
        if k <= 0:
            return []
        for n in range(min(self.n_max, len(self) - 1), self.n_min - 1, -1):
            start = self.after.get(hash(tuple(self[-n:])))
            if start is not None:
                return self[start:start + k]
        return []


def verify_sampled(probs: mx.array, draft: list[int], uniforms: list[float], draw) -> list[int]:
    """Tokens a sampled row emits: probs (len(draft)+1, vocab) is the target's distribution at
    each position, `uniforms` one draw in [0, 1) per draft token, `draw(logits)` samples."""
    m = 0
    if draft:
        p_draft = mx.take_along_axis(probs[: len(draft)], mx.array(draft)[:, None], axis=-1)[:, 0].tolist()
        while m < len(draft) and uniforms[m] < p_draft[m]:
            m += 1
    row = probs[m]
    if m < len(draft):  # rejected: the rest of the distribution, without the draft's token
        row = mx.where(mx.arange(row.shape[-1]) == draft[m], 0.0, row)
    return draft[:m] + [int(draw(mx.log(row)).item())]


def verify(draft: list[int], logits: mx.array, sampler, target: list[int] | None = None) -> list[int]:
    """The draft's kept tokens plus the target's own next one, from the target's logits at the
    draft's positions (len(draft)+1, vocab): while the draft is the argmax (greedy; `target`, the
    argmax when already read), or by rejection sampling against the row's sampling distribution."""
    if sampler is None:
        target = target if target is not None else mx.argmax(logits, axis=-1).tolist()
        m = 0
        while m < len(draft) and draft[m] == target[m]:
            m += 1
        return draft[:m] + [target[m]]
    lp = log_probs(logits.astype(mx.float32))
    uniforms = sampler.uniform(len(draft)).tolist() if draft else []
    return verify_sampled(sampler.probs(lp), draft, uniforms, sampler.categorical)


def next_k(k: int, proposed: int, accepted: int, k_max: int) -> int:
    """Adaptive draft length: one longer after a draft that landed whole, one shorter after one
    that mostly missed."""
    if proposed and accepted == proposed:
        return min(k + 1, k_max)
    if proposed and accepted < proposed // 2:
        return max(1, k - 1)
    return k


PLAIN_STRETCH = (8, 256)  # tokens decoded without drafts when drafts do not help: first, most (doubling)
MISSES_BEFORE_PLAIN = 6  # drafting steps in a row that accepted nothing


@dataclass
class Stretches:
    """When drafting pauses: a stretch of plain steps, 8 at first and doubling up to 256 while
    drafts keep failing, back to 8 at the first accepted draft (solo and batch alike). The miss
    count survives a stretch: after one, a single missed draft starts the next, so a sequence
    drafts cannot help costs one unpipelined step per stretch, not six."""
    left: int = 0  # plain steps left in the current stretch
    length: int = PLAIN_STRETCH[0]
    misses: int = 0  # drafting steps since the last accepted draft that accepted nothing

    def start(self) -> None:
        self.left, self.length = self.length, min(2 * self.length, PLAIN_STRETCH[1])

    @property
    def failing(self) -> bool:
        """Drafts have missed often enough that a plain stretch should run its course."""
        return self.misses >= MISSES_BEFORE_PLAIN

    def after(self, accepted: int) -> bool:
        """After a drafting step: whether a plain stretch is due now."""
        if accepted:
            self.misses, self.length = 0, PLAIN_STRETCH[0]
            return False
        self.misses += 1
        return self.failing


@dataclass
class DraftStats:
    """One model's drafting record: counts for /v1/stats, and its plain-stretch state, which
    outlives a request (solo or batch) so that where drafts keep failing on a model a new
    request does not pay six misses again before its first stretch (one is enough)."""
    steps: int = 0
    proposed: int = 0
    accepted: int = 0
    stretches: Stretches = field(default_factory=Stretches)

    def record(self, proposed: int, accepted: int) -> None:
        self.steps += 1
        self.proposed += proposed
        self.accepted += accepted


class NgramSolo(Solo):
    """Solo with n-gram drafts. A drafting step is not pipelined: it reads its forward's tokens
    at once (and may return several). Where drafts do not help (no n-gram matches, or drafts
    rejected six times in a row) it decodes a stretch of tokens the plain pipelined way, so a
    sequence that never repeats itself runs at Solo's speed; the stretch doubles while drafts
    keep failing and starts over at the first accepted one."""

    def __init__(self, *args, context: list[int], k_max: int, stats: DraftStats, match: tuple[int, int] = (2, 4), **kw):
        super().__init__(*args, **kw)
        # every token of the sequence so far (the last is the next input), its n-grams of match[0]..match[1]
        self.seen = History(context, n_min=match[0], n_max=match[1])
        self.k_max, self.k = k_max, max(1, k_max // 2)
        self.stats = stats
        self.stretches = stats.stretches  # a new request keeps the model's miss count, from the first stretch length
        self.stretches.left, self.stretches.length = 0, PLAIN_STRETCH[0]
        self.until_match = False

    @property
    def plain(self) -> int:
        """Steps left in a plain stretch."""
        return self.stretches.left

    def _go_plain(self, until_match: bool = False) -> None:
        """Into a plain stretch: Solo's state, with the next input not yet in the cache.
        until_match: it began for want of an n-gram match, and lasts until one appears
        (unless drafts have been failing: then it runs its course)."""
        self.stretches.start()
        self.until_match = until_match and not self.stretches.failing
        self.last, self.y = self.seen[-1], None

    def _plain_step(self):
        st = self.stretches
        if self.until_match:  # (the lookup runs while the queued forward does)
            if self.seen.propose(1):
                st.left = min(st.left, 1)  # a match: the stretch ends with this step
            elif st.left <= 1:
                st.left = 2  # still none: go on, rather than break the pipeline for nothing
        st.left -= 1
        if st.left > 0 or self.y is None:
            got = super().step()  # returns a token and queues the next one's forward
        else:  # the stretch ends: the queued token comes out and nothing new is queued,
            token, lp = self.y.item(), self.lp  # so the last token is again the next input
            self.y = self.lp = None
            self.n += 1
            got = [token], lp, finish_for(token, self.n, self.max_tokens, self.stop_ids)
        self.seen += got[0]
        return got

    def _propose(self, k: int) -> list[int]:
        return self.seen.propose(k)

    def _accepted(self, draft: list[int], m: int, before: int) -> None:
        """After verification (draft.py keeps a second cache in step here)."""

    def step(self):
        if self.pending:
            return super().step()
        if self.plain:
            return self._plain_step()
        before = len(self.seen)
        draft = self._propose(min(self.k, self.max_tokens - self.n - 1))
        if not draft and self.max_tokens - self.n > 1:
            self._go_plain(until_match=True)
            return self._plain_step()
        inputs = [self.seen[-1], *draft]
        saved = checkpoint(self.cache, len(inputs))
        logits = self.model(mx.array(inputs)[None], cache=self.cache)[0]
        self._quantize()
        emitted = verify(draft, logits, self.sampler)
        m = len(emitted) - 1
        take_back(self.model, self.cache, saved, inputs, m + 1)  # the KV (or state) of rejected drafts goes
        self._accepted(draft, m, before)
        self.stats.record(len(draft), m)
        self.k = next_k(self.k, len(draft), m, self.k_max)
        stretch_due = self.stretches.after(m)
        kept, finish = until_finish(emitted, self.n, self.max_tokens, self.stop_ids)
        out = emitted[:kept]
        self.n += kept
        self.seen += out
        if stretch_due and finish is None:
            self._go_plain()
        return out, None, finish  # no logprob row: rows that ask for logprobs are never drafted

    def handover(self):
        """To the batch: the KV holds every token but the last, which the batch feeds next
        (in a plain stretch: Solo's handover, the queued token pending)."""
        if self.pending or self.y is not None:
            return super().handover()
        return [self.seen[-1]], self.cache, None
