"""Embedding, reranking and perplexity work, cut into pieces that run between decode steps.

A job is a generator (Embedder.embed_steps / rerank_steps, perplexity_steps) that yields after
each batch or chunk.
The engine advances one job by one piece per loop turn, round-robin, so long work never
holds the thread for more than a batch: streams keep moving and the watchdog sees
progress. Aborting a job (its client is gone) drops it at the next piece.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Generator

from protocol import messages as m

from ..models.embedder import EmbedError
from .errors import RequestError, internal
from .perplexity import perplexity_steps

log = logging.getLogger("novamlx.engine")


class Jobs:
    def __init__(self, emit: Callable[[object], None]):
        self.emit = emit
        self.queue: OrderedDict[str, tuple[Generator, Callable]] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self.queue)

    def add(self, rid: str, steps: Generator, reply: Callable[[object], object]) -> None:
        """`reply` turns the generator's return value into the message for the client."""
        self.queue[rid] = (steps, reply)

    def embed(self, emb, cmd) -> None:
        if isinstance(cmd, m.Embed):
            self.add(cmd.id, emb.embed_steps(cmd.texts, cmd.tokens, cmd.truncate, cmd.input_type),
                     lambda done: m.Embeddings(cmd.id, done[0].tolist(), done[1]))
        else:
            self.add(cmd.id, emb.rerank_steps(cmd.query, cmd.documents), lambda done: m.Scores(cmd.id, *done))

    def perplexity(self, lm, cmd: m.Perplexity) -> None:
        if lm.vision is not None:
            raise RequestError("Perplexity is measured on text models only.", "invalid_value", "model")
        ids = lm.tokenizer.encode(cmd.text)
        if len(ids) < 2:
            raise RequestError("The text must be at least two tokens long.", "invalid_value", "texts")
        self.add(cmd.id, perplexity_steps(lm.model, ids, max(cmd.chunk, 16)),
                 lambda done: m.Result(cmd.id, tokens=done["tokens"], data=done))

    def abort(self, rid: str) -> bool:
        return self.queue.pop(rid, None) is not None

    def advance(self) -> None:
        """One piece of the oldest job; it then goes to the back of the line."""
        rid, (steps, reply) = self.queue.popitem(last=False)
        try:
            next(steps)
        except StopIteration as done:
            self.emit(reply(done.value))
            return
        except EmbedError as e:
            self.emit(m.Error(rid, str(e), "invalid_value", e.param))
            return
        except Exception as e:  # noqa: BLE001 - one job's failure is its own error, never the engine's end
            log.exception("job %s failed", rid)
            self.emit(internal(rid, e))
            return
        self.queue[rid] = (steps, reply)
