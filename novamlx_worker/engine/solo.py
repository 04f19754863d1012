"""The one-sequence fast path.

mlx-lm's batch path pays a large per-step cost at batch 1 (on an H100, 8B bf16: 66 tok/s
against stream_generate's 135-157). When a runner holds a single sequence it decodes here
instead, exactly like `generate_step`: a plain KVCache, the next token's forward queued
with `mx.async_eval` while this one is read. A second sequence moves it into the batch.
"""
from __future__ import annotations

import mlx.core as mx
from mlx_lm.generate import maybe_quantize_kv_cache
from mlx_lm.models.cache import QuantizedKVCache

from ..sampling import log_probs
from .kv import ContiguousQuantizedKVCache, KVFormat
from .path import finish_for


class Solo:
    def __init__(self, model, rid: int, tokens: list[int], cache: list, sampler, processors, max_tokens: int,
                 stop_ids: set[int], prefill_step: int, kv: KVFormat = KVFormat()):
        self.model = model
        self.kv = kv
        self.rid = rid
        self.cache = cache
        self.sampler = sampler
        self.processors = processors
        self.max_tokens = max_tokens
        self.stop_ids = stop_ids
        self.prefill_step = prefill_step
        self.pending = list(tokens[:-1])  # still to prefill
        self.last = tokens[-1]
        self.y = self.lp = None  # the next token, queued
        self.context = None  # tokens for logits processors (last prompt token, then generated)
        self.n = 0

    def _quantize(self) -> None:
        """Quantized KV: the cache is converted after each forward, where mlx-lm's generate_step
        does it (quantized_kv_start 0), so the tokens equal its quantized-cache generation."""
        if self.kv.quantized:
            maybe_quantize_kv_cache(self.cache, 0, self.kv.group_size, self.kv.bits)
            if self.kv.contiguous:
                for c in self.cache:
                    if type(c) is QuantizedKVCache:
                        c.__class__ = ContiguousQuantizedKVCache

    def _forward(self, y: mx.array):
        logits = self.model(y[None], cache=self.cache)[:, -1, :]
        if self.processors:
            self.context = y if self.context is None else mx.concatenate([self.context, y])
            for p in self.processors:
                logits = p(self.context, logits)
        self._quantize()
        lp = log_probs(logits)
        nxt = self.sampler(lp) if self.sampler is not None else mx.argmax(lp, axis=-1)
        return nxt, lp[0]

    def step(self):
        """One prefill chunk (returns None) or this step's tokens: ([token], logprob row, finish_reason)."""
        if self.pending:
            chunk, self.pending = self.pending[: self.prefill_step], self.pending[self.prefill_step:]
            self.model(mx.array(chunk)[None], cache=self.cache)
            self._quantize()
            mx.eval([c.state for c in self.cache])
            return None
        if self.y is None:
            self.y, self.lp = self._forward(mx.array([self.last]))
        y, lp = self.y, self.lp
        self.y, self.lp = self._forward(y)
        mx.async_eval(self.y, self.lp)
        token = y.item()
        self.n += 1
        finish = finish_for(token, self.n, self.max_tokens, self.stop_ids)
        return [token], lp, finish

    def handover(self):
        """(tokens still to feed, cache, pending) to continue this sequence in the batch.

        pending: (token, logprob row, finish_reason) of a queued token the engine has not
        seen yet, or None. The queued forward already put the last returned token in the
        cache; the queued sample is that pending token, which the batch feeds next."""
        if self.pending:
            return self.pending + [self.last], self.cache, None
        if self.y is None:
            return [self.last], self.cache, None
        token = self.y.item()
        self.n += 1
        finish = finish_for(token, self.n, self.max_tokens, self.stop_ids)
        return [token], self.cache, (token, self.lp, finish)
