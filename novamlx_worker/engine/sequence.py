"""One request's generation state, from admission to its finish."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from protocol.messages import Sampling

from .output import Output


@dataclass(eq=False)
class Sequence:
    id: str
    model_id: str
    prompt: list[int]
    sampling: Sampling
    max_tokens: int
    output: Output  # tokens -> what the client sees
    priority: int = 0
    rid: int | None = None  # the runner's id while it is running
    out_tokens: list[int] = field(default_factory=list)  # generated token ids
    kv_bytes: int = 0  # reserved against the KV budget while it runs
    blocks: list = field(default_factory=list)  # prefix-cache blocks it holds references to
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    sampler: object = None  # kept across preemption so a seeded stream continues
    preemptions: int = 0
    grammar: str | None = None  # compiled llguidance grammar for structured output
    speculative: bool = True  # drafts may serve it (engine/ngram.py, draft.py) when the server has them
    session: str | None = None  # its state starts from and goes back to this session (sessions.py)
    vision: object = None  # models.vision.VisionInputs for a vision-language model
    script: list[int] | None = None  # test-only forced output (see faults.scripted_output)
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    @property
    def generated(self) -> int:
        return len(self.out_tokens)

    @property
    def tokens(self) -> list[int]:
        """Everything the model has seen or produced, in order."""
        return self.prompt + self.out_tokens

    @property
    def top_logprobs(self) -> int:
        return self.sampling.top_logprobs if self.sampling.logprobs else 0
