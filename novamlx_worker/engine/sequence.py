"""One request's generation state, from admission to its finish."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from protocol.messages import Sampling

from ..text.detok import IncrementalDecoder
from ..text.stops import StopMatcher


@dataclass(eq=False)
class Sequence:
    id: str
    model_id: str
    prompt: list[int]
    sampling: Sampling
    max_tokens: int
    decoder: IncrementalDecoder
    stops: StopMatcher
    uid: int | None = None  # the batch generator's id once admitted
    generated: int = 0
    kv_bytes: int = 0  # reserved against the KV budget while it runs
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    @property
    def top_logprobs(self) -> int:
        return self.sampling.top_logprobs if self.sampling.logprobs else 0
