"""The runner owns the tensors: one mlx-lm BatchGenerator per model.

All sequences of a model decode in one batched forward per step; prompts are
prefilled in chunks between decode steps. Every call here must come from the one
engine thread (MLX streams belong to the thread that made them).
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, StopSequences
from mlx_lm.models.cache import KVCache, make_prompt_cache

from ..models.loader import LoadedModel
from ..sampling import make_penalties, make_sampler
from .sequence import Sequence


@dataclass
class TokenOut:
    uid: int
    token: int
    logprobs: mx.array  # the full normalized row, read only when a request asks
    finish_reason: str | None  # "stop" (a stop token), "length", or None
    cache: list | None  # per-layer KV of a sequence the batch just finished


class Runner:
    def __init__(self, loaded: LoadedModel, max_batch: int = 32, prefill_batch: int = 8,
                 prefill_step: int = 512):
        self.loaded = loaded
        self.eos = StopSequences([[t] for t in loaded.tokenizer.eos_ids])
        self.no_eos = StopSequences()
        self.gen = BatchGenerator(loaded.model, max_tokens=1 << 30, completion_batch_size=max_batch,
                                  prefill_batch_size=prefill_batch, prefill_step_size=prefill_step)
        self.active = 0
        # Prefix caching needs plain KV caches (not rotating windows or SSM state).
        self.cacheable = all(type(c) is KVCache for c in make_prompt_cache(loaded.model))

    def add(self, seq: Sequence, cache: list | None = None) -> int:
        """Insert a sequence; with a cache, only the tokens after it are prefilled."""
        tokens = seq.tokens
        if seq.sampler is None:
            seq.sampler = make_sampler(seq.sampling)
        prompt = tokens[cache[0].offset:] if cache else tokens
        stops = self.no_eos if seq.sampling.ignore_eos else self.eos
        (uid,) = self.gen.insert([prompt], max_tokens=[seq.max_tokens - seq.generated],
                                 caches=[cache] if cache else None, samplers=[seq.sampler],
                                 logits_processors=[make_penalties(seq.sampling, seq.prompt, seq.out_tokens)],
                                 stop_sequences=[stops])
        self.active += 1
        return uid

    def remove(self, uid: int) -> list | None:
        """Take a sequence out of the batch; returns its KV (per layer) when it has any."""
        got = self.gen.remove([uid], return_prompt_caches=True)
        self.active -= 1
        cache = got.get(uid, (None,))[0]
        return cache if cache and cache[0] is not None and getattr(cache[0], "offset", 0) > 0 else None

    def finished(self, uid: int) -> None:
        """The batch already dropped a sequence that returned a finish reason."""
        self.active -= 1

    def step(self) -> list[TokenOut]:
        out = self.gen.next_generated()
        return [TokenOut(r.uid, r.token, r.logprobs, r.finish_reason, r.prompt_cache) for r in out]

    def prompt_logprobs(self, prompt: list[int]) -> list[mx.array]:
        """Logprob rows predicting each prompt token from its prefix (for echo + logprobs)."""
        cache = make_prompt_cache(self.loaded.model)
        logits = self.loaded.model(mx.array(prompt)[None], cache=cache)[0].astype(mx.float32)
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return [lp[i] for i in range(len(prompt) - 1)]
