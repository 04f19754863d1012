"""The runner owns the tensors of one model.

Many sequences decode in one batched forward per step (engine/batch.py: fixed KV slots,
prompts prefilled in chunks between decode steps). Sliding-window and SSM/hybrid models batch
there too where drafts are on (windows in rings, ring.py; state rows, state_slots.py), else
through mlx-lm's BatchGenerator. A lone
sequence decodes on the Solo fast path and moves into the batch when a second one
arrives. Sequences are named by the runner's own stable ids, whichever path they are on.
Every call here must come from the one engine thread (MLX streams belong to the thread
that made them).
"""
from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from ..models.loader import LoadedModel
from ..models.pool import kv_bytes_per_token
from ..grammar import GrammarProcessor
from ..sampling import force_tokens, log_probs, make_penalties, make_sampler, think_budget
from .batch import Batch, Row
from .kv import KVFormat, held, slot_layers
from .mlxlm_batch import MlxLmBatch
from .path import TokenOut
from .snapshots import Snapshots
from .sequence import Sequence
from .draft import DraftSolo
from .draft_batch import ModelDrafts
from .ngram import DraftStats, History, NgramSolo
from .spec_batch import BatchDrafts
from .solo import Solo


def processors_for(seq: Sequence, loaded: LoadedModel, vocab_size: int) -> list:
    """The logits processors a sequence needs now (penalties, thinking budget, grammar)."""
    if seq.script is not None:
        procs = [force_tokens(seq.script[seq.generated:])]
    else:
        procs = make_penalties(seq.sampling, seq.prompt, seq.out_tokens)
    budget = seq.sampling.thinking_budget
    reasoning = seq.output.reasoning
    if budget is not None and reasoning is not None:
        close = loaded.tokenizer.encode("</think>", add_special=False)
        procs.append(think_budget(max(budget - seq.generated, 0), close,
                                  lambda: reasoning.state in ("start", "thinking")))
    if seq.grammar is not None:  # last: the mask has the final word
        procs.append(GrammarProcessor(seq.grammar, loaded.tokenizer, vocab_size, seq.out_tokens))
    return procs


class Runner:
    def __init__(self, loaded: LoadedModel, max_batch: int = 32, prefill_batch: int = 16,
                 prefill_step: int = 512, kv: KVFormat = KVFormat(), snapshot_bytes: int = 0, ngram_k: int = 0,
                 draft: LoadedModel | None = None, draft_k: int = 4, draft_error: str = "", draft_prefix=None,
                 ngram_match: tuple[int, int] = (2, 4)):
        self.loaded = loaded
        self.ngram_k = ngram_k  # n-gram drafts of up to k tokens (ngram.py, spec_batch.py); 0: off
        self.ngram_match = ngram_match  # the n-grams looked up: shortest and longest n
        self.draft, self.draft_k = draft, draft_k  # a draft model's proposals instead (draft.py, draft_batch.py)
        self.draft_prefix = draft_prefix  # the draft's own prefix cache, or None
        self.drafts = DraftStats()
        self.draft_error = draft_error  # why a draft model set for this one does not serve, for /v1/stats
        self.kv = kv  # quantized KV applies to plain-KV models (the slot batch and solo path)
        self.eos_ids = set(loaded.tokenizer.stop_ids)  # EOS and turn-opening control tokens
        self.prefill_step = prefill_step
        slotted = slot_layers(loaded.model)  # per layer: plain KV, a window or SSM state (kv.py)
        # Plain KV caches (every layer) are what prefix caching needs (not windows or SSM state).
        self.cacheable = slotted is not None and not any(slotted)
        # states kept whole for prefix reuse where KV cannot be cut into blocks (snapshots.py)
        self.snapshots = None if self.cacheable else Snapshots(snapshot_bytes)
        if not self.cacheable:
            self.kv = KVFormat()  # windows and SSM state stay as the model makes them
        # a drafting row holds the draft's KV beside the target's: admission prices both
        self.draft_kv_ratio = (kv_bytes_per_token(draft) / kv_bytes_per_token(loaded, self.kv.bits, self.kv.group_size)
                               if draft is not None else 0.0)
        self.seqs: dict[int, Sequence] = {}  # a windowed or hybrid model's rows in the slot batch, for kept states
        if slotted and any(slotted) and not (ngram_k or draft is not None):
            # windowed and hybrid rows take the slot batch to draft together there; without drafts
            # BatchGenerator stays (on the H200 it decoded 32 equal-length streams of a gemma3-4b
            # shape 20% faster)
            slotted = None
        if slotted is not None:
            drafts = None
            if draft is not None:  # (a draft with SSM state drafts on the solo path only)
                drafts = ModelDrafts(draft_k, self.drafts, draft.model, max_batch, prefill_step, draft_prefix) \
                    if ModelDrafts.serves(draft.model) else None
            elif ngram_k:
                drafts = BatchDrafts(ngram_k, self.drafts)
            self.batch = Batch(loaded.model, max_batch, prefill_step, prefill_batch, kv=self.kv, drafts=drafts,
                               layers=slotted)
            if self.snapshots is not None and snapshot_bytes > 0:
                self.batch.prefilled = self._prompt_in
        else:
            self.batch = MlxLmBatch(loaded.model, max_batch, prefill_step, prefill_batch, self.snapshots)
        self.vocab_size = loaded.model.args.vocab_size
        self.solo: Solo | None = None
        self.solo_seq: Sequence | None = None
        # A sequence leaving the solo path with a token the engine has not seen: that token is
        # returned first, and the sequence joins the batch at the next step, once the engine
        # has it (its logits processors must count it).
        self.carry: list[TokenOut] = []
        self.handoff: tuple[int, Sequence, list] | None = None  # (rid, seq, cache)
        self._next_rid = 0
        self.active = 0

    # the decode-path surface the engine uses besides add/remove/finished/step
    @property
    def stream(self):
        return self.batch.stream

    def kv_cost(self, reserved: list[int]) -> int:
        """KV bytes these rows hold at most here, the draft model's KV for them included."""
        return int(self.batch.kv_cost(reserved) * (1 + self.draft_kv_ratio))

    def peek(self, tokens: list[int]) -> int:
        return self.snapshots.peek(tokens) if self.snapshots is not None else 0

    def info(self) -> dict:
        info = self.batch.info()
        if self.ngram_k or self.draft is not None:
            d = self.drafts
            info["draft_model" if self.draft is not None else "ngram"] = {
                "steps": d.steps, "proposed": d.proposed, "accepted": d.accepted,
                "acceptance": round(d.accepted / d.proposed, 3) if d.proposed else None,
                "tokens_per_step": round((d.steps + d.accepted) / d.steps, 3) if d.steps else None}
        if self.draft_error:
            info["draft_model_error"] = self.draft_error
        if self.snapshots is not None:
            info["snapshots"] = self.snapshots.snapshot()
        return info

    def add(self, seq: Sequence, cache: list | None = None) -> int:
        """Insert a sequence; with a cache, only the tokens after it are prefilled."""
        self._next_rid += 1
        rid = self._next_rid
        if seq.sampler is None:
            seq.sampler = make_sampler(seq.sampling)
        tokens = seq.tokens[held(cache):] if cache else seq.tokens
        processors, solo = None, False
        if self.active == 0:
            cache, tokens = self._restore(seq, cache, tokens)
            processors = self._processors(seq)
            solo = not self._batch_drafts_only(seq, processors)  # alone, unless only the slot batch drafts for it
        elif self.solo is not None:
            self._solo_to_batch()
        if solo:
            self._start_solo(rid, seq, tokens, cache, processors)
        else:
            if isinstance(self.batch, Batch):  # (BatchGenerator's rows look themselves up)
                cache, tokens = self._restore(seq, cache, tokens)
            reused = self._insert(rid, seq, tokens, cache, processors)
            if reused and seq.preemptions == 0:  # a kept state (snapshots.py) spared this much prefill
                seq.cached_tokens = reused
        self.active += 1
        return rid

    def _restore(self, seq: Sequence, cache: list | None, tokens: list[int]) -> tuple[list | None, list[int]]:
        """A kept state (snapshots.py) in place of prefilling what it holds, where one extends."""
        if cache is not None or self.snapshots is None:
            return cache, tokens
        reused, cache = self.snapshots.match(seq.tokens)
        if reused and seq.preemptions == 0:
            seq.cached_tokens = reused
        return cache, seq.tokens[reused:]

    def _prompt_in(self, row: Row, cache: list) -> None:
        """A windowed or hybrid row's prompt is in (all but its last token, decode's): keep its state."""
        seq = self.seqs.get(row.rid)
        if seq is not None:
            self.snapshots.keep(seq.tokens, cache)

    def _start_solo(self, rid: int, seq: Sequence, tokens: list[int], cache: list | None, processors: list) -> None:
        args = (self.loaded.model, rid, tokens, cache or make_prompt_cache(self.loaded.model), seq.sampler,
                processors, seq.max_tokens - seq.generated, self._stop_ids(seq), self.prefill_step, self.kv)
        plain = not self._drafts_serve(seq, processors)  # any cache kind can be taken back (rollback.py)
        if self.draft is not None and not plain:
            self.solo = DraftSolo(*args, context=seq.tokens, k_max=self.draft_k, stats=self.drafts,
                                  draft_model=self.draft.model, draft_prefix=self.draft_prefix)
        elif self.ngram_k and not plain:
            self.solo = NgramSolo(*args, context=seq.tokens, k_max=self.ngram_k, stats=self.drafts, match=self.ngram_match)
        else:
            self.solo = Solo(*args)
        self.solo_seq = seq

    def _stop_ids(self, seq: Sequence) -> set[int]:
        return set() if seq.sampling.ignore_eos else self.eos_ids

    def _insert(self, rid: int, seq: Sequence, tokens: list[int], cache: list | None, processors=None) -> int:
        processors = self._processors(seq) if processors is None else processors
        if self.snapshots is not None and isinstance(self.batch, Batch):  # (BatchGenerator keeps its own)
            self.seqs[rid] = seq
        row = Row(rid, seq.sampler, processors, self._stop_ids(seq), seq.max_tokens - seq.generated,
                  known=(held(cache) if cache else 0) + len(tokens), logprobs=seq.sampling.logprobs)
        if getattr(self.batch, "drafts", None) is not None and self._drafts_serve(seq, processors, in_batch=True):
            n_min, n_max = self.ngram_match
            row.history = History(seq.tokens, n_max=n_max, n_min=n_min)  # it drafts in the batch (spec_batch.py)
        return self.batch.add(row, tokens, cache) or 0

    def _batch_drafts_only(self, seq: Sequence, processors: list) -> bool:
        """A row with logprobs or processors: the slot batch drafts for it, the solo path would not."""
        return (getattr(self.batch, "drafts", None) is not None and self._drafts_serve(seq, processors, in_batch=True)
                and not self._drafts_serve(seq, processors))

    @staticmethod
    def _drafts_serve(seq: Sequence, processors: list, in_batch: bool = False) -> bool:
        """Rows drafts serve (yet), unless the request turned them off. In the slot batch: rows
        whose processors may be called on draft positions (penalties, grammar, the thinking budget,
        which bounds the draft's length itself) and logprob rows; on the solo path: neither."""
        if not seq.speculative:
            return False
        if in_batch:
            return all(getattr(p, "drafts", False) for p in processors)
        return not processors and not seq.sampling.logprobs

    def _processors(self, seq: Sequence) -> list:
        return processors_for(seq, self.loaded, self.vocab_size)

    def _solo_to_batch(self) -> None:
        solo, seq = self.solo, self.solo_seq
        self.solo = self.solo_seq = None
        tokens, cache, pending = solo.handover()
        if pending is None:
            self._insert(solo.rid, seq, tokens, cache)
            return
        token, lp, finish = pending
        self.carry.append(TokenOut(solo.rid, [token], finish, cache if finish else None, lp))
        if finish is None:
            self.handoff = (solo.rid, seq, cache)

    def remove(self, rid: int) -> list | None:
        """Take a sequence out; returns its KV (per layer) when it has any."""
        self.active -= 1
        self.carry = [o for o in self.carry if o.rid != rid]
        if self.solo is not None and self.solo.rid == rid:
            cache, self.solo, self.solo_seq = self.solo.cache, None, None
            return cache if cache and held(cache) > 0 else None
        if self.handoff is not None and self.handoff[0] == rid:
            cache, self.handoff = self.handoff[2], None
            return cache
        self.seqs.pop(rid, None)
        cache = self.batch.remove(rid)
        if self.active == 0:
            self.batch.release()
        return cache

    def finished(self, rid: int) -> None:
        """The sequence returned a finish reason and has already left its path."""
        self.active -= 1
        if self.solo is not None and self.solo.rid == rid:
            self.solo = self.solo_seq = None
        else:
            self.seqs.pop(rid, None)
            self.batch.finished(rid)
            if self.active == 0:
                self.batch.release()

    def step(self) -> list[TokenOut]:
        out, self.carry = self.carry, []
        if self.handoff is not None and not out:
            rid, seq, cache = self.handoff
            self.handoff = None
            self._insert(rid, seq, seq.tokens[held(cache):], cache)
        if self.solo is not None:
            solo, seq = self.solo, self.solo_seq
            with mx.stream(self.batch.stream):
                got = solo.step()
            if got is None:
                if not solo.pending and not self.cacheable:  # the prompt is in (its last token is decode's)
                    self.snapshots.keep(seq.tokens[:-1], solo.cache)
                return out
            tokens, lp, finish = got
            if finish and not self.cacheable:  # the queued forward has fed the last token too
                self.snapshots.keep(seq.tokens + tokens, solo.cache)
            out.append(TokenOut(solo.rid, tokens, finish, solo.cache if finish else None, lp))
            return out
        got = self.batch.step()
        if self.seqs:  # a windowed model's finished rows: keep their states
            for o in got:
                seq = self.seqs.pop(o.rid, None) if o.finish_reason else None
                if seq is not None and o.cache:
                    self.snapshots.keep(seq.tokens + o.tokens, o.cache)
        return out + got

    def prompt_logprobs(self, prompt: list[int]) -> list[mx.array]:
        """Logprob rows predicting each prompt token from its prefix (for echo + logprobs)."""
        cache = make_prompt_cache(self.loaded.model)
        logits = self.loaded.model(mx.array(prompt)[None], cache=cache)[0].astype(mx.float32)
        lp = log_probs(logits)
        return [lp[i] for i in range(len(prompt) - 1)]
