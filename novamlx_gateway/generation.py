"""One HTTP request's generations in the worker: submit, await start, iterate events.

Shared by every wire format: they differ only in how they render the events.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from protocol import messages as m

from .admission import Admission
from .errors import APIError, worker_error
from .worker_client import WorkerClient


@dataclass
class Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[m.TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    usage: m.Usage | None = None
    stop: str | None = None  # the stop string that ended it
    tool_calls: list[m.ToolCallDelta] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)


class Generation:
    """n sequences sharing one event queue; index i is command i."""

    def __init__(self, worker: WorkerClient, cmds: list[m.Generate], timeout: float, admission: Admission,
                 n: int = 1, rename: dict | None = None):
        self.worker = worker
        self.rename = rename or {}  # the worker's field names -> the route's (Responses: messages -> input)
        self.admission = admission
        self.holds_slot = False
        self.cmds = cmds
        self.index = {c.id: i for i, c in enumerate(cmds)}
        self.queue: asyncio.Queue = asyncio.Queue()
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.open = set(self.index)
        self.n = n  # choices per prompt: prompts are counted once in usage
        self.prompt_counts: dict[str, int] = {}
        self.completion_tokens = 0
        self.cached_tokens: dict[str, int] = {}  # Started's estimate, then what Finished reports
        self.created = int(time.time())

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:24]

    async def _get(self):
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation that lands
        # as the queue hands over an event, and a cancelled (abandoned) request would run on.
        remaining = self.deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                return await self.queue.get()
        except TimeoutError:
            self.abort()
            raise APIError(504, f"The request timed out after {self.timeout:.0f} s.", "timeout") from None

    async def start(self) -> None:
        """Submit and wait until every sequence started; errors here come before any byte is sent."""
        await self.admission.acquire(max(self.deadline - time.monotonic(), 0.001))
        self.holds_slot = True
        for c in self.cmds:
            self.worker.submit(c, self.queue)
        waiting = set(self.index)
        early: list = []
        try:
            while waiting:
                ev = await self._get()
                if isinstance(ev, m.Started):
                    waiting.discard(ev.id)
                    self.prompt_counts[ev.id] = ev.prompt_tokens
                    self.cached_tokens[ev.id] = ev.cached_tokens
                elif isinstance(ev, m.Error):
                    self.abort()
                    raise self.error(ev)
                else:
                    early.append(ev)
        except asyncio.CancelledError:
            self.abort()
            raise
        for ev in early:  # deltas of sequences that started before the others
            self.queue.put_nowait(ev)

    async def events(self):
        """Yields (index, event) for Delta, Finished and Error events until all sequences end."""
        try:
            while self.open:
                ev = await self._get()
                i = self.index.get(getattr(ev, "id", None))
                if i is None:
                    continue
                if isinstance(ev, (m.Finished, m.Error)):
                    self.open.discard(ev.id)
                if isinstance(ev, m.Finished):
                    self.completion_tokens += ev.usage.completion_tokens
                    self.cached_tokens[ev.id] = ev.usage.cached_tokens
                yield i, ev
        finally:
            self.abort()

    def abort(self) -> None:
        """End whatever still runs and give the slot back; safe to call more than once."""
        for rid in list(self.open):
            self.worker.abort(rid)
        self.open.clear()
        if self.holds_slot:
            self.holds_slot = False
            self.admission.release()

    async def collect(self) -> list[Choice]:
        choices = [Choice() for _ in self.cmds]
        async for i, ev in self.events():
            c = choices[i]
            if isinstance(ev, m.Delta):
                if ev.text:
                    c.text.append(ev.text)
                if ev.logprobs:
                    c.logprobs.extend(ev.logprobs)
                if ev.tool_calls:
                    c.tool_calls.extend(ev.tool_calls)
                if ev.reasoning:
                    c.reasoning.append(ev.reasoning)
            elif isinstance(ev, m.Finished):
                c.finish_reason, c.usage, c.stop = ev.finish_reason, ev.usage, ev.stop
            elif isinstance(ev, m.Error):
                raise self.error(ev)
        return choices

    def error(self, ev: m.Error) -> APIError:
        """A worker error in the route's words (its field names)."""
        return worker_error(ev, self.rename)

    def totals(self) -> m.Usage:
        """Tokens in and out so far, each prompt counted once however many choices it has."""
        firsts = [c.id for c in self.cmds[:: self.n]]
        prompt = sum(self.prompt_counts.get(i, 0) for i in firsts)
        cached = sum(self.cached_tokens.get(i, 0) for i in firsts)
        return m.Usage(prompt, self.completion_tokens, cached)

    def usage(self) -> dict:
        """OpenAI usage."""
        return usage_dict(self.totals())


def model_or_404(worker: WorkerClient, name: str, kinds: tuple[str, ...] = ("llm", "vlm")) -> m.ModelInfo:
    info = worker.resolve_model(name)
    if info is None:
        raise APIError(404, f"The model `{name}` does not exist or you do not have access to it.",
                       "model_not_found", "model")
    if info.kind not in kinds:
        raise APIError(400, f"The model `{info.id}` is a{'n' if info.kind[0] in 'aeiou' else ''} {info.kind} model; "
                            f"this endpoint needs a{'n' if kinds[0][0] in 'aeiou' else ''} {' or '.join(kinds)} model.",
                       "invalid_model", "model")
    return info


def usage_dict(u: m.Usage) -> dict:
    """OpenAI's usage object for these counts."""
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
