"""The gateway's side of the pipe for requests: submit commands, route the worker's events
to each request by id, and keep what the worker says it serves.

Each request owns an asyncio.Queue; events are routed to it by request id. The worker
process itself is the Supervisor's (supervisor.py). If the worker dies, requests that
produced nothing yet are re-sent to its replacement, and the rest receive an error event,
so no client ever hangs.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import msgspec

from protocol import PROTOCOL_VERSION
from protocol import messages as m

from .config import Config
from .supervisor import Supervisor

log = logging.getLogger("novamlx.supervisor")


@dataclass
class Pending:
    cmd: object
    queue: asyncio.Queue
    produced: bool = False
    sent: int = 0  # order in which the current worker was sent it (0: not sent yet)
    started: bool = False  # the worker admitted it (Started)
    crashes: int = 0  # worker crashes it was in flight for, unproduced


class WorkerClient:
    def __init__(self, cfg: Config, extra_env: dict | None = None):
        self.cfg = cfg
        self.supervisor = Supervisor(cfg, self._dispatch, self._fail_in_flight, extra_env)
        self.pending: dict[str, Pending] = {}
        self.models: list[m.ModelInfo] = []
        self.health: m.Health | None = None
        self.boot_commands = lambda: []  # sent to each new worker before any request (the catalog's)
        self.settings = None  # the per-model settings store: aliases and the default model
        self.sent_count = 0
        self.rejected: dict[str, int] = {}  # 4xx answers by error code (the gateway's, never the worker's)
        self.supervisor.annotate = lambda: {"rejected": dict(self.rejected), "poison_requests": self.crashes_by_request}
        self.crashes_by_request = 0  # worker crashes pinned on one request (failed, not replayed)
        self.observers: list = []  # called with (Generate, Finished | Error) as each generation ends

    @property
    def state(self):
        return self.supervisor.state

    @property
    def health_log(self):
        return self.supervisor.health_log

    async def start(self) -> None:
        await self.supervisor.start()

    async def stop(self, grace: float = 10.0) -> None:
        await self.supervisor.stop(grace)

    def _fail_in_flight(self, code) -> None:
        """Streams that already produced output get an error; the rest wait for the new worker.

        A request must not become a crash loop. The worker takes commands in the order they were
        sent, so the first one sent and never admitted is the one it died admitting: it is failed,
        not replayed. Admitted requests that produced nothing are replayed once; a second crash
        while they are in flight fails them too."""
        unstarted = [p for p in self.pending.values() if p.sent and not p.started and isinstance(p.cmd, m.Generate)]
        poison = min(unstarted, key=lambda p: p.sent) if unstarted else None
        for rid, p in list(self.pending.items()):
            if p.produced or not isinstance(p.cmd, m.Generate):
                self.pending.pop(rid, None)
                self._end(p, m.Error(rid, f"The model worker crashed (exit code {code}) while generating; "
                                          "the request was not completed. Please retry.", "worker_crashed"))
                continue
            p.crashes += p.started
            if p is poison or p.crashes > 1:
                self.pending.pop(rid, None)
                log.error("request %s was in flight when the worker crashed: failed, not replayed", rid)
                self._end(p, m.Error(rid, f"The model worker crashed (exit code {code}) while handling this "
                                          "request; it is not retried, so that it cannot crash the worker "
                                          "again.", "worker_crashed_on_request"))
            p.sent, p.started = 0, False
        self.crashes_by_request += 1 if poison is not None else 0

    def _dispatch(self, ev) -> None:
        if isinstance(ev, m.Step):
            for d in ev.deltas:
                p = self.pending.get(d.id)
                if p is not None:
                    p.produced = True
                    p.queue.put_nowait(d)
        elif isinstance(ev, (m.Started,)):
            p = self.pending.get(ev.id)
            if p is not None:
                p.started = True
                p.queue.put_nowait(ev)
        elif isinstance(ev, (m.Finished, m.Error, m.Result, m.Embeddings, m.Scores)):
            p = self.pending.pop(ev.id, None)
            if p is not None:
                self._end(p, ev)
            elif isinstance(ev, m.Error) and not ev.id:
                log.error("worker: %s", ev.message)
        elif isinstance(ev, m.Health):
            self.health = ev
        elif isinstance(ev, m.Hello):
            self._on_hello(ev)
        elif isinstance(ev, m.Models):
            self.models = ev.models

    def _end(self, p: Pending, ev) -> None:
        """A request's last event: to its queue, and to the observers (stats, metrics) for a generation."""
        p.queue.put_nowait(ev)
        if isinstance(p.cmd, m.Generate) and isinstance(ev, (m.Finished, m.Error)):
            for observe in self.observers:
                try:
                    observe(p.cmd, ev)
                except Exception:  # noqa: BLE001 - counting must never break a request
                    log.exception("stats observer failed")

    def _on_hello(self, ev: m.Hello) -> None:
        if ev.version != PROTOCOL_VERSION:
            log.error("worker speaks protocol %s, gateway %s", ev.version, PROTOCOL_VERSION)
        self.models = ev.models
        asyncio.get_running_loop().create_task(self._boot())

    async def _boot(self) -> None:
        """Registration and policies first, then requests that waited (or survived a crash)."""
        for cmd in self.boot_commands():
            q: asyncio.Queue = asyncio.Queue()
            self.pending[cmd.id] = Pending(cmd, q)
            self.supervisor.send(cmd)
            try:
                ev = await asyncio.wait_for(q.get(), self.cfg.worker_start_timeout)
            except asyncio.TimeoutError:
                ev = None
            if not isinstance(ev, m.Result):
                log.error("worker boot command %s failed: %s", type(cmd).__name__, getattr(ev, "message", "timeout"))
            self.pending.pop(cmd.id, None)
        self.supervisor.mark_ready()
        for p in list(self.pending.values()):  # accepted before a crash, never started: run them now
            self._send(p)

    # ---- requests ----
    def submit(self, cmd, queue: asyncio.Queue) -> None:
        self.pending[cmd.id] = Pending(cmd, queue)
        if self.state.ready:
            self._send(self.pending[cmd.id])

    def _send(self, p: Pending) -> None:
        self.sent_count += 1
        p.sent = self.sent_count
        self.supervisor.send(p.cmd)

    async def call(self, cmd, timeout: float = 30.0):
        """A command answered by one Result (settings, count_tokens); errors become APIError."""
        from .errors import APIError, worker_error

        q: asyncio.Queue = asyncio.Queue()
        self.submit(cmd, q)
        try:
            async with asyncio.timeout(timeout):  # (see Generation._get: wait_for can drop a cancellation)
                ev = await q.get()
        except TimeoutError:
            self.abort(cmd.id)  # long work (a big rerank) stops too, not only the wait
            raise APIError(504, "The model worker did not answer in time.", "timeout") from None
        except asyncio.CancelledError:  # the client hung up
            self.abort(cmd.id)
            raise
        if isinstance(ev, m.Error):
            raise worker_error(ev)
        return ev

    async def stats(self) -> dict | None:
        """The worker's numbers now (a Stats command), or the last health push if it cannot answer."""
        if self.state.ready:
            from .errors import APIError

            try:
                ev = await self.call(m.Stats(f"stats-{time.monotonic_ns()}"), timeout=5.0)
                return ev.data
            except APIError:
                pass
        return msgspec.to_builtins(self.health) if self.health else None

    def fail_all(self, message: str, kind: str = "server_shutting_down") -> int:
        """End every request in flight with an error event (the worker stops their work): on
        shutdown, a stream still running at the deadline ends in its wire's error, not a cut."""
        rids = list(self.pending)
        for rid in rids:
            self._end(self.pending[rid], m.Error(rid, message, kind))
            self.abort(rid)
        return len(rids)

    def abort(self, rid: str) -> None:
        if self.pending.pop(rid, None) is not None and self.state.ready:
            self.supervisor.send(m.Abort(rid))

    def resolve_model(self, name: str) -> m.ModelInfo | None:
        """By id, alias (the model's own or a per-model setting), or "default"."""
        settings = self.settings
        if settings is not None:
            target = settings.alias_target(name) or (settings.default_model() if name == "default" else None)
            if target:
                name = target
        if name == "default":
            name = next((i.id for i in self.models if i.kind == "llm"), name)
        for info in self.models:
            if name == info.id:
                return info
        low = name.lower()
        for info in self.models:
            if low == info.id.lower() or low in (a.lower() for a in info.aliases):
                return info
        return None
