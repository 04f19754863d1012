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
from .runner import TokenOut, processors_for
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

    def add(self, seq: Sequence, cache=None) -> int:
        self._next_rid += 1
        if seq.sampler is None:
            seq.sampler = make_sampler(seq.sampling)
        self.queue.append((self._next_rid, seq))
        return self._next_rid

    def _begin(self) -> None:
        from mlx_vlm.generate.ar import generate_step

        rid, seq = self.queue.popleft()
        vi = seq.vision
        if self.loaded.vision.tower is not None:
            self.loaded.vision.tower.key = vi.key
        gen = generate_step(vi.input_ids, self.loaded.model, vi.pixel_values, vi.mask,
                            max_tokens=seq.max_tokens, sampler=seq.sampler,
                            logits_processors=processors_for(seq, self.loaded, self.vocab_size),
                            prefill_step_size=self.prefill_step, **vi.extra)
        self.current = (rid, seq, gen)

    def _end(self) -> None:
        if self.current is not None:
            self.current[2].close()
            self.current = None
            if self.loaded.vision.tower is not None:
                self.loaded.vision.tower.key = None

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
        rid, seq, gen = self.current
        try:
            token, logprobs = next(gen)
        except StopIteration:  # mlx-vlm reached max_tokens
            self._end()
            return []
        token = int(token.item() if isinstance(token, mx.array) else token)
        row = logprobs.reshape(-1) if isinstance(logprobs, mx.array) else logprobs
        stop = token in self.eos_ids and not seq.sampling.ignore_eos
        finish = "stop" if stop else ("length" if seq.generated + 1 >= seq.max_tokens else None)
        if finish:
            self._end()
        return [TokenOut(rid, token, row, finish, None)]

    def prompt_logprobs(self, prompt: list[int]):
        raise NotImplementedError("echo with logprobs is not available for vision-language models")
