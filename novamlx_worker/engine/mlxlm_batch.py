"""mlx-lm's BatchGenerator as a decode path, for caches the slot batch cannot hold (sliding
windows, SSM state). It keeps the finish rule itself (max_tokens, stop sequences of one token).

Prefix reuse for these models goes through whole-state snapshots (snapshots.py): the prompt
is inserted as one segment, so BatchGenerator pauses at its end and the row's state is kept
there; a finished row's state is kept too. A new row that extends a kept sequence starts from
a copy of its state.
"""
from __future__ import annotations

from mlx_lm.generate import BatchGenerator, StopSequences

from .batch import Row
from .path import TokenOut
from .snapshots import Snapshots


class MlxLmBatch:
    """mlx-lm's BatchGenerator behind Batch's interface, for caches Batch cannot hold."""

    def __init__(self, model, max_batch: int, prefill_step: int, prefill_batch: int, snapshots: Snapshots):
        self.gen = BatchGenerator(model, max_tokens=1 << 30, completion_batch_size=max_batch,
                                  prefill_batch_size=prefill_batch, prefill_step_size=prefill_step)
        self.stream = self.gen.stream
        self.uid_of: dict[int, int] = {}  # runner id -> batch uid
        self.rid_of: dict[int, int] = {}  # batch uid -> runner id
        self.tokens: dict[int, list[int]] = {}  # batch uid -> every token of the row so far
        self.snapshots = snapshots  # the runner's kept states

    def add(self, row: Row, tokens: list[int], cache: list | None) -> int:
        """Queue a row; returns how many of its tokens a kept state spared it."""
        full, reused = list(tokens), 0
        if cache is None:
            reused, cache = self.snapshots.match(full)
            tokens = full[reused:]
        stops = StopSequences([[t] for t in row.stop_ids])
        (uid,) = self.gen.insert([tokens], max_tokens=[row.max_tokens], caches=[cache] if cache else None,
                                 samplers=[row.sampler], logits_processors=[row.processors], stop_sequences=[stops])
        self.uid_of[row.rid], self.rid_of[uid] = uid, row.rid
        self.tokens[uid] = full
        return reused

    def remove(self, rid: int) -> list | None:
        uid = self.uid_of.pop(rid)
        self.rid_of.pop(uid, None)
        self.tokens.pop(uid, None)
        cache = self.gen.remove([uid], return_prompt_caches=True).get(uid, (None,))[0]
        return cache if cache and cache[0] is not None and getattr(cache[0], "offset", 0) > 0 else None

    def finished(self, rid: int) -> None:
        uid = self.uid_of.pop(rid, -1)
        self.rid_of.pop(uid, None)
        self.tokens.pop(uid, None)

    def release(self) -> None:
        pass  # BatchGenerator frees its caches as rows leave

    @staticmethod
    def kv_cost(reserved: list[int]) -> int:
        return sum(reserved)

    def info(self) -> dict:
        return {"path": "mlx-lm BatchGenerator", "live": len(self.uid_of)}  # (the runner adds its kept states)

    def step(self) -> list[TokenOut]:
        prompts, generated = self.gen.next()
        for p in prompts if self.snapshots.capacity > 0 else ():
            if getattr(p, "end_of_segment", False) and p.uid in self.tokens:  # the prompt is in: keep its state
                self.snapshots.keep(self.tokens[p.uid][:-1], self.gen.extract_cache([p.uid])[p.uid][0])
        out = []
        for r in generated:
            if r.uid not in self.rid_of:
                continue
            tokens = self.tokens[r.uid]
            tokens.append(r.token)
            if r.finish_reason is not None and r.prompt_cache is not None:
                self.snapshots.keep(tokens, r.prompt_cache)
            out.append(TokenOut(self.rid_of[r.uid], [r.token], r.finish_reason, r.prompt_cache, r.logprobs))
        return out
