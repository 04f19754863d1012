"""The runner of a vision-language model: mlx-vlm's generate_step, one sequence at a time.

mlx-vlm keeps per-prompt state on the model object (Qwen-VL's mRoPE deltas), so two
sequences of one VLM cannot interleave: they queue here first in, first out, each running
to its end, while other models' batches keep stepping beside it. Same interface as Runner.
"""
from __future__ import annotations

from collections import deque

import mlx.core as mx

from ..models.loader import LoadedModel
from ..sampling import make_sampler
from .kv import held
from .path import TokenOut, finish_for
from .runner import processors_for
from .sequence import Sequence


class VisionRunner:
    cacheable = False  # no prefix cache: image tokens are not text

    def __init__(self, loaded: LoadedModel, prefill_step: int = 512):
        self.loaded = loaded
        self.prefill_step = prefill_step
        self.eos_ids = set(loaded.tokenizer.stop_ids)
        cfg = loaded.model.config
        self.vocab_size = getattr(getattr(cfg, "text_config", None), "vocab_size", None) or cfg.vocab_size
        self.queue: deque[tuple[int, Sequence]] = deque()
        self.current: tuple[int, Sequence, object] | None = None  # (rid, seq, token generator)
        self._next_rid = 0

    @property
    def active(self) -> int:
        return len(self.queue) + (self.current is not None)

    @property
    def stream(self):
        return mx.default_stream(mx.default_device())

    @staticmethod
    def kv_cost(reserved: list[int]) -> int:
        return sum(reserved)

    @staticmethod
    def peek(tokens: list[int]) -> int:
        return 0  # its prompt cache (models/vision.py) reports its own hits

    def info(self) -> dict:
        return {"path": "vision", "queued": len(self.queue), "running": int(self.current is not None)}

    def add(self, seq: Sequence, cache=None) -> int:
        self._next_rid += 1
        if seq.sampler is None:
            seq.sampler = make_sampler(seq.sampling)
        self.queue.append((self._next_rid, seq))
        return self._next_rid

    def _begin(self) -> None:
        from mlx_vlm.generate.ar import generate_step
        from mlx_vlm.models.cache import make_prompt_cache

        rid, seq = self.queue.popleft()
        vi, vision, model = seq.vision, self.loaded.vision, self.loaded.model
        if vision.tower is not None:
            vision.tower.key = vi.key
        kwargs = dict(vi.extra)
        cache, n = vision.prompts.take(model, vi, kwargs)
        ids, pixels = vi.input_ids, vi.pixel_values
        if cache is None:
            cache = make_prompt_cache(model.language_model)
        else:  # the prefix (images included) is in the cache: feed the text after it
            ids, pixels = ids[:, n:], None
            kwargs.pop("pixel_values_videos", None)
            seq.cached_tokens = n
        gen = generate_step(ids, model, pixels, vi.mask, max_tokens=seq.max_tokens, sampler=seq.sampler,
                            logits_processors=processors_for(seq, self.loaded, self.vocab_size),
                            prefill_step_size=self.prefill_step, prompt_cache=cache, **kwargs)
        self.current = (rid, seq, gen, cache)

    def _end(self, last: int | None = None) -> None:
        """last: the token this step returns (the engine appends it to the sequence after us)."""
        if self.current is None:
            return
        _, seq, gen, cache = self.current
        gen.close()
        self.current = None
        vision = self.loaded.vision
        if vision.tower is not None:
            vision.tower.key = None
        tokens = seq.vision.input_ids[0].tolist() + seq.out_tokens + ([last] if last is not None else [])
        n = held(cache)
        if 0 < n <= len(tokens):  # its KV covers tokens[:n]: kept for a conversation that goes on
            vision.prompts.put(tokens[:n], seq.vision.key, cache)

    def remove(self, rid: int) -> None:
        if self.current is not None and self.current[0] == rid:
            self._end()
        else:
            self.queue = deque((r, s) for r, s in self.queue if r != rid)
        return None

    def finished(self, rid: int) -> None:
        if self.current is not None and self.current[0] == rid:
            self._end()

    def step(self) -> list[TokenOut]:
        if self.current is None:
            if not self.queue:
                return []
            self._begin()
        rid, seq, gen, _ = self.current
        try:
            token, logprobs = next(gen)
        except StopIteration:  # mlx-vlm reached max_tokens
            self._end()
            return []
        token = int(token.item() if isinstance(token, mx.array) else token)
        row = logprobs.reshape(-1) if isinstance(logprobs, mx.array) else logprobs
        stops = set() if seq.sampling.ignore_eos else self.eos_ids
        finish = finish_for(token, seq.generated + 1, seq.max_tokens, stops)
        if finish:
            self._end(last=token)
        return [TokenOut(rid, [token], finish, None, row)]
