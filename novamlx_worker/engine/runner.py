"""The runner owns the tensors of one model.

Many sequences decode in one batched forward per step through mlx-lm's BatchGenerator,
prompts prefilled in chunks between decode steps. A lone sequence decodes on the Solo fast
path and moves into the batch when a second one arrives. Sequences are named by the
runner's own stable ids, whichever path they are on. Every call here must come from the
one engine thread (MLX streams belong to the thread that made them).
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, StopSequences
from mlx_lm.models.cache import KVCache, make_prompt_cache

from ..models.loader import LoadedModel
from ..grammar import GrammarProcessor
from ..sampling import force_tokens, make_penalties, make_sampler, think_budget
from .sequence import Sequence
from .solo import Solo


@dataclass
class TokenOut:
    rid: int
    token: int
    logprobs: mx.array  # the full normalized row, read only when a request asks
    finish_reason: str | None  # "stop" (a stop token), "length", or None
    cache: list | None  # per-layer KV of a sequence that just finished


def processors_for(seq: Sequence, loaded: LoadedModel, vocab_size: int) -> list:
    """The logits processors a sequence needs now (penalties, thinking budget, grammar)."""
    if seq.script is not None:
        procs = [force_tokens(seq.script[seq.generated:])]
    else:
        procs = make_penalties(seq.sampling, seq.prompt, seq.out_tokens)
    budget = seq.sampling.thinking_budget
    if budget is not None and seq.reasoning is not None:
        close = loaded.tokenizer.encode("</think>", add_special=False)
        procs.append(think_budget(max(budget - seq.generated, 0), close,
                                  lambda: seq.reasoning.state in ("start", "thinking")))
    if seq.grammar is not None:  # last: the mask has the final word
        procs.append(GrammarProcessor(seq.grammar, loaded.tokenizer, vocab_size, seq.out_tokens))
    return procs


class Runner:
    def __init__(self, loaded: LoadedModel, max_batch: int = 32, prefill_batch: int = 8,
                 prefill_step: int = 512, solo: bool = True):
        self.loaded = loaded
        self.eos_ids = set(loaded.tokenizer.stop_ids)  # EOS and turn-opening control tokens
        self.eos = StopSequences([[t] for t in loaded.tokenizer.stop_ids])
        self.no_eos = StopSequences()
        self.prefill_step = prefill_step
        self.gen = BatchGenerator(loaded.model, max_tokens=1 << 30, completion_batch_size=max_batch,
                                  prefill_batch_size=prefill_batch, prefill_step_size=prefill_step)
        # Plain KV caches are what prefix caching and the solo path need (not windows or SSM state).
        self.cacheable = all(type(c) is KVCache for c in make_prompt_cache(loaded.model))
        self.solo_enabled = solo and self.cacheable
        self.vocab_size = loaded.model.args.vocab_size
        self.solo: Solo | None = None
        self.solo_seq: Sequence | None = None
        self.uid_of: dict[int, int] = {}  # runner id -> batch uid
        self.rid_of: dict[int, int] = {}  # batch uid -> runner id
        self._next_rid = 0
        self.active = 0

    def add(self, seq: Sequence, cache: list | None = None) -> int:
        """Insert a sequence; with a cache, only the tokens after it are prefilled."""
        self._next_rid += 1
        rid = self._next_rid
        if seq.sampler is None:
            seq.sampler = make_sampler(seq.sampling)
        tokens = seq.tokens[cache[0].offset:] if cache else seq.tokens
        if self.active == 0 and self.solo_enabled:
            stop_ids = set() if seq.sampling.ignore_eos else self.eos_ids
            self.solo = Solo(self.loaded.model, rid, tokens, cache or make_prompt_cache(self.loaded.model),
                             seq.sampler, self._processors(seq),
                             seq.max_tokens - seq.generated, stop_ids, self.prefill_step)
            self.solo_seq = seq
        else:
            if self.solo is not None:
                self._solo_to_batch()
            self._insert(rid, seq, tokens, cache)
        self.active += 1
        return rid

    def _insert(self, rid: int, seq: Sequence, tokens: list[int], cache: list | None, generated: int | None = None):
        stops = self.no_eos if seq.sampling.ignore_eos else self.eos
        done = seq.generated if generated is None else generated
        (uid,) = self.gen.insert([tokens], max_tokens=[seq.max_tokens - done], caches=[cache] if cache else None,
                                 samplers=[seq.sampler],
                                 logits_processors=[self._processors(seq)],
                                 stop_sequences=[stops])
        self.uid_of[rid], self.rid_of[uid] = uid, rid

    def _processors(self, seq: Sequence) -> list:
        return processors_for(seq, self.loaded, self.vocab_size)

    def _solo_to_batch(self) -> None:
        solo, seq = self.solo, self.solo_seq
        self.solo = self.solo_seq = None
        tokens, cache = solo.handover()
        self._insert(solo.rid, seq, tokens, cache)

    def remove(self, rid: int) -> list | None:
        """Take a sequence out; returns its KV (per layer) when it has any."""
        self.active -= 1
        if self.solo is not None and self.solo.rid == rid:
            cache, self.solo, self.solo_seq = self.solo.cache, None, None
            return cache if cache and cache[0].offset > 0 else None
        uid = self.uid_of.pop(rid)
        self.rid_of.pop(uid, None)
        got = self.gen.remove([uid], return_prompt_caches=True)
        cache = got.get(uid, (None,))[0]
        return cache if cache and cache[0] is not None and getattr(cache[0], "offset", 0) > 0 else None

    def finished(self, rid: int) -> None:
        """The sequence returned a finish reason and has already left its path."""
        self.active -= 1
        if self.solo is not None and self.solo.rid == rid:
            self.solo = self.solo_seq = None
        else:
            self.rid_of.pop(self.uid_of.pop(rid, -1), None)

    def step(self) -> list[TokenOut]:
        if self.solo is not None:
            with mx.stream(self.gen.stream):
                got = self.solo.step()
            if got is None:
                return []
            token, lp, finish = got
            return [TokenOut(self.solo.rid, token, lp, finish, self.solo.cache if finish else None)]
        out = self.gen.next_generated()
        return [TokenOut(self.rid_of[r.uid], r.token, r.logprobs, r.finish_reason, r.prompt_cache)
                for r in out if r.uid in self.rid_of]

    def prompt_logprobs(self, prompt: list[int]) -> list[mx.array]:
        """Logprob rows predicting each prompt token from its prefix (for echo + logprobs)."""
        cache = make_prompt_cache(self.loaded.model)
        logits = self.loaded.model(mx.array(prompt)[None], cache=cache)[0].astype(mx.float32)
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return [lp[i] for i in range(len(prompt) - 1)]
