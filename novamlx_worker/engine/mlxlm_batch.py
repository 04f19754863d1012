"""mlx-lm's BatchGenerator as a decode path, for caches the slot batch cannot hold (sliding
windows, SSM state). It keeps the finish rule itself (max_tokens, stop sequences of one token)."""
from __future__ import annotations

from mlx_lm.generate import BatchGenerator, StopSequences

from .batch import Row
from .path import TokenOut


class MlxLmBatch:
    """mlx-lm's BatchGenerator behind Batch's interface, for caches Batch cannot hold."""

    def __init__(self, model, max_batch: int, prefill_step: int, prefill_batch: int):
        self.gen = BatchGenerator(model, max_tokens=1 << 30, completion_batch_size=max_batch,
                                  prefill_batch_size=prefill_batch, prefill_step_size=prefill_step)
        self.stream = self.gen.stream
        self.uid_of: dict[int, int] = {}  # runner id -> batch uid
        self.rid_of: dict[int, int] = {}  # batch uid -> runner id

    def add(self, row: Row, tokens: list[int], cache: list | None) -> None:
        stops = StopSequences([[t] for t in row.stop_ids])
        (uid,) = self.gen.insert([tokens], max_tokens=[row.max_tokens], caches=[cache] if cache else None,
                                 samplers=[row.sampler], logits_processors=[row.processors], stop_sequences=[stops])
        self.uid_of[row.rid], self.rid_of[uid] = uid, row.rid

    def remove(self, rid: int) -> list | None:
        uid = self.uid_of.pop(rid)
        self.rid_of.pop(uid, None)
        cache = self.gen.remove([uid], return_prompt_caches=True).get(uid, (None,))[0]
        return cache if cache and cache[0] is not None and getattr(cache[0], "offset", 0) > 0 else None

    def finished(self, rid: int) -> None:
        self.rid_of.pop(self.uid_of.pop(rid, -1), None)

    def release(self) -> None:
        pass  # BatchGenerator frees its caches as rows leave

    @staticmethod
    def kv_cost(reserved: list[int]) -> int:
        return sum(reserved)

    def info(self) -> dict:
        return {"path": "mlx-lm BatchGenerator", "live": len(self.uid_of)}

    def step(self) -> list[TokenOut]:
        return [TokenOut(self.rid_of[r.uid], [r.token], r.finish_reason, r.prompt_cache, r.logprobs)
                for r in self.gen.next_generated() if r.uid in self.rid_of]
