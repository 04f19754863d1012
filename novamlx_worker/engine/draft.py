"""Draft-model speculative decoding for a lone sequence: a smaller model with the same
tokenizer proposes k tokens (greedily, one cheap forward each), the target scores them all in
one forward and keeps what it would have produced (ngram.py's rule: argmax for greedy rows,
rejection sampling for sampled ones, so the output is exactly the target's). Both caches are
taken back to the accepted tokens (rollback.py: any cache kind); the draft's catches up on what
it has not seen at the next step.
"""
from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from .ngram import NgramSolo
from .rollback import checkpoint, take_back


def check_pair(target, draft) -> None:
    """A draft must speak the target's tokens: same vocabulary size and special tokens."""
    t, d = target.tokenizer, draft.tokenizer
    if t.vocab_size != d.vocab_size or set(t.eos_ids) != set(d.eos_ids) or t.bos_id != d.bos_id:
        raise ValueError(f"draft model `{draft.id}` does not share `{target.id}`'s tokenizer (vocabulary "
                         f"{d.vocab_size} vs {t.vocab_size}, or different special tokens)")


def prefill_draft(model, tokens: list[int], prefix, step: int) -> list:
    """A fresh cache of the draft model holding `tokens`: the longest prefix its own prefix cache
    holds (agent turns resend the conversation), the rest computed in chunks and kept there."""
    cache, start = None, 0
    if prefix is not None and len(tokens) >= prefix.block_size:
        blocks = prefix.match(tokens + [0])  # (match leaves one token to compute: here all of `tokens` may come)
        if blocks:
            cache = prefix.build(blocks)
            start = cache[0].offset
    cache = cache or make_prompt_cache(model)
    for i in range(start, len(tokens), step):
        model(mx.array(tokens[i:i + step])[None], cache=cache)
        mx.eval([c.state for c in cache])
    if prefix is not None and len(tokens) > start:
        prefix.store(tokens, cache)
    return cache


class DraftSolo(NgramSolo):
    def __init__(self, *args, draft_model, draft_prefix=None, **kw):
        super().__init__(*args, **kw)
        self.draft, self.draft_prefix = draft_model, draft_prefix  # its prefix cache (plain-KV drafts), or None
        self.draft_cache = None
        self.draft_len = 0  # tokens of `seen` the draft's cache holds (a prefix)
        self.fed, self.saved = [], None  # the last proposal's inputs, and what rolls them back

    def _propose(self, k: int) -> list[int]:
        if self.draft_cache is None:  # the prompt (from the draft's prefix cache where it can)
            self.draft_cache = prefill_draft(self.draft, self.seen[:-1], self.draft_prefix, self.prefill_step)
            self.draft_len = len(self.seen) - 1
        behind = self.seen[self.draft_len:-1]
        for i in range(0, len(behind), self.prefill_step):  # catch up on accepted tokens
            self.draft(mx.array(behind[i:i + self.prefill_step])[None], cache=self.draft_cache)
        self.draft_len += len(behind)
        self.saved = checkpoint(self.draft_cache, k)
        out, y = [], self.seen[-1]
        for _ in range(k):
            y = mx.argmax(self.draft(mx.array([y])[None], cache=self.draft_cache)[0, -1]).item()
            out.append(y)
        self.fed = [self.seen[-1], *out[:-1]] if out else []
        self.draft_len += len(self.fed)
        return out

    def _accepted(self, draft: list[int], m: int, before: int) -> None:
        """The draft's cache holds seen[:before] + draft[:-1] (fed: seen[before-1:] + draft[:-1]):
        keep what is still true, the last input and the m kept drafts."""
        keep = min(1 + m, len(self.fed))
        take_back(self.draft, self.draft_cache, self.saved, self.fed, keep)
        self.draft_len -= len(self.fed) - keep
        self.fed, self.saved = [], None
