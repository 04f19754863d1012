"""The engine thread: admits requests, steps every model's decode path, streams deltas out.

`step()` is one turn (schedule -> a decode step per model -> outputs -> emit), as in nano-vllm's
LLMEngine; `run()` drains commands and steps until shutdown. One message per step carries the
deltas of every sequence that advanced. The parts: intake.py (command -> Sequence), output.py
(tokens -> deltas), models.py (what is loaded), budget.py (KV bytes), scheduler.py (policy),
jobs.py (embedding work), stats.py (numbers for the health push).
"""
from __future__ import annotations

import logging
import queue
import time
from typing import Callable

from protocol import messages as m

from ..faults import FaultSwitch
from ..pressure import Pressure
from ..memory import MemoryEnforcer
from ..models.loader import LoadedModel
from ..models.pool import ModelPool, kv_bytes_per_token
from ..sampling import step_logprobs
from . import budget, intake
from .errors import RequestError, internal
from .jobs import Jobs
from .models import Models
from .output import echo_delta
from .scheduler import Scheduler
from .sessions import Sessions
from .sequence import Sequence
from .ssd_cache import SSDTier
from .stats import engine_stats

log = logging.getLogger("novamlx.engine")


class Engine:
    def __init__(self, pool: ModelPool, emit: Callable[[object], None], memory: MemoryEnforcer,
                 max_batch: int = 32, prefill_step: int = 512, prefill_batch: int = 16, default_max_tokens: int = 4096,
                 kv_budget_cap: int = 0, block_size: int = 64, prefix_cache_bytes: int = 2 * 1024**3,
                 ssd: SSDTier | None = None, embedders: list | None = None, tool_parser: str = "auto",
                 turn_stops: list[str] | None = None, lockstep=None, kv: tuple[int, int] = (0, 64), ngram_k: int = 0,
                 draft: str = "", draft_k: int = 4, sessions: Sessions | None = None,
                 ngram_match: tuple[int, int] = (2, 4)):
        self.emit = emit
        self.memory = memory
        self.models = Models(pool, embedders or [], lambda: emit(m.Models(self.models.infos())), max_batch,
                             prefill_step, prefill_batch, block_size, prefix_cache_bytes, ssd, kv, ngram_k, draft, draft_k,
                             ngram_match)
        self.lockstep = lockstep  # a sharded model's ranks: rank 0 decides, the others follow (lockstep.py)
        self.default_max_tokens = default_max_tokens
        self.kv_budget_cap = kv_budget_cap
        self.tool_parser = tool_parser
        self.turn_stops = list(turn_stops or [])  # text patterns that end a turn, for every request
        self.inbox: queue.Queue = queue.Queue()
        self.seqs: dict[str, Sequence] = {}  # every accepted, unfinished sequence
        self.counters = {"queued": 0, "completed": 0, "preempted": 0, "aborted": 0, "peak_active": 0, "failed": 0,
                         "wait_s_total": 0.0, "started": 0, "runner_s": 0.0, "runner_calls": 0, "step_s": 0.0}
        self.sessions = sessions or Sessions(None)
        self.scheduler = Scheduler(self.models, max_batch, prefill_batch, self.kv_budget,
                                   lambda items: budget.kv_cost(items, self.runners), self.counters, self.sessions)
        self.stopping = False
        self.heartbeat = time.monotonic()
        self.tokens_out = 0  # generated tokens since start, for the health push
        self.rate_state: dict = {}  # tokens and time at the last health push (health.snapshot)
        self.steps = 0
        self.peak_batch = 0
        self.fault = FaultSwitch()
        self.pressure = Pressure()  # the machine's memory pressure, and MLX's cache given back when idle
        self.jobs = Jobs(emit)  # embedding, reranking and perplexity, a piece at a time between decode steps
        answer = lambda fn: lambda cmd: self.emit(m.Result(cmd.id, data=fn(cmd)))  # noqa: E731 - one Result
        self.handlers = {
            m.Generate: self._accept, m.Abort: self._abort,
            m.Embed: lambda cmd: self.jobs.embed(self.models.embedder(cmd.model), cmd),
            m.Rerank: lambda cmd: self.jobs.embed(self.models.embedder(cmd.model), cmd),
            m.Perplexity: lambda cmd: self.jobs.perplexity(self._model(cmd.model), cmd),
            m.CountTokens: lambda cmd: self.emit(m.Result(cmd.id, tokens=intake.count_tokens(self._model(cmd.model), cmd))),
            m.Settings: answer(self._settings),
            m.LoadModel: answer(lambda cmd: self.models.load(cmd.spec, cmd.pin, self._refuse_load)),
            m.UnloadModel: answer(lambda cmd: self.models.unload(cmd.model, self._busy())),
            m.Register: answer(lambda cmd: self.models.register_all(cmd.models)),
            m.Forget: answer(lambda cmd: self.models.forget(cmd.model, self._busy())),
            m.Policies: answer(lambda cmd: self.models.apply(cmd.models, self._busy())),
            m.SessionOp: answer(lambda cmd: self.sessions.command(cmd)),
            m.Ping: lambda cmd: self.emit(m.Pong(cmd.nonce)), m.Shutdown: lambda cmd: setattr(self, "stopping", True)}

    @property
    def runners(self) -> dict:
        return self.models.runners

    @property
    def caches(self) -> dict:
        return self.models.caches

    # ---- the loop ----
    def run(self) -> None:
        while not self.stopping:
            self.heartbeat = time.monotonic()
            if self.lockstep is None:
                self.memory.poll(self._free_one)
                self.models.expire(self._busy)
                self.pressure.relieve(self.pressure.poll(), self.models, self._busy, self.memory.limit, self.sessions)
                self.pressure.idle(not self.seqs and not self.jobs)
                self.sessions.expire()
                self._drain(block=not self.seqs and not self.jobs)
            else:  # sharded: every rank handles the commands rank 0 took
                for cmd in self.lockstep.commands(self.inbox, bool(self.seqs),
                                                  [r.stream for r in self.runners.values()]):
                    self.handle(cmd)
            self.step()

    def step(self) -> None:
        """One turn: admit what fits, one decode step of every model's batch, one piece of
        embedding work. Commands are taken before (run's drain, or the tests')."""
        self.scheduler.schedule()
        if any(r.active for r in self.runners.values()):
            t = time.perf_counter()
            self._step()
            self.counters["step_s"] += time.perf_counter() - t
        if self.jobs:
            self.jobs.advance()

    def _drain(self, block: bool) -> None:
        """Every queued command, waiting up to 0.5 s for the first when there is nothing to do."""
        try:
            cmd = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            while True:
                self.handle(cmd)
                cmd = self.inbox.get_nowait()
        except queue.Empty:
            return

    # ---- commands ----
    def handle(self, cmd) -> None:
        """One command; a failure is that command's error event, never the engine's end."""
        try:
            self.handlers[type(cmd)](cmd)
        except RequestError as e:
            self.emit(e.event(cmd.id))
        except Exception as e:  # noqa: BLE001
            log.exception("command %s failed", type(cmd).__name__)
            rid = getattr(cmd, "id", None)
            if isinstance(rid, str):
                self.emit(internal(rid, e))

    def _busy(self) -> set[str]:
        return {s.model_id for s in self.seqs.values()}

    def _free_one(self) -> bool:  # over the memory limit: a session leaves memory first, then an idle model
        return self.sessions.drop_one() or self.models.evict_one(self._busy())

    def _refuse_load(self) -> RequestError | None:
        return budget.over_memory(self.memory) if self.memory.refusing else None

    def _model(self, name: str) -> LoadedModel:
        return self.models.get(name, self._refuse_load)

    def kv_budget(self) -> int:  # the memory limit's share for KV, less what sessions keep
        return max(budget.kv_budget(self.memory, self.models.pool, self.kv_budget_cap) - self.sessions.bytes, 0)

    def memory_state(self) -> dict:
        return {**self.memory.state(), "kv_budget_bytes": self.kv_budget(), "models_loaded": self.models.loaded(),
                "kv_reserved_bytes": self.scheduler.kv_reserved, "kv": self.models.kv_report(),
                "pressure": self.pressure.state()}

    def _abort(self, cmd: m.Abort) -> None:
        seq = self.seqs.get(cmd.id)
        if seq is not None:
            self._finish(seq, "abort")
        elif self.jobs.abort(cmd.id):
            self.counters["aborted"] += 1

    def _settings(self, cmd: m.Settings) -> dict:
        if cmd.max_process_memory is not None:
            try:
                self.memory.set_limit(cmd.max_process_memory)
            except ValueError as e:
                raise RequestError(str(e), "invalid_value", "max_process_memory") from None
            self.memory.poll(self._free_one, force=True)
        return self.memory_state()

    def _accept(self, cmd: m.Generate) -> None:
        if self.memory.refusing:
            raise budget.over_memory(self.memory)
        if cmd.id in self.seqs:
            raise RequestError(f"duplicate request id {cmd.id}", "invalid_request")
        self.fault.check_request(cmd.id, cmd.messages)
        lm = self._model(cmd.model)
        kv = self.models.kv_format(lm.id)
        limits = intake.Limits(self.models.window(lm), self.default_max_tokens, self.kv_budget(),
                               kv_bytes_per_token(lm, kv.bits, kv.group_size))
        seq = intake.build(cmd, lm, limits, self.turn_stops, self.tool_parser)
        pc = self.caches.get(lm.id)  # what is cached now: the client's usage reports it up front
        cached = pc.peek(seq.prompt) if pc is not None else self.runners[lm.id].peek(seq.prompt)
        self.emit(m.Started(cmd.id, prompt_tokens=len(seq.prompt), cached_tokens=cached))
        if cmd.echo:
            rows = self.runners[lm.id].prompt_logprobs(seq.prompt) if seq.sampling.logprobs else None
            self.emit(m.Step([echo_delta(lm.tokenizer, seq, rows)]))
        self.seqs[seq.id] = seq
        self.scheduler.waiting.append(seq)
        self.counters["queued"] += 1

    # ---- one step ----
    def _step(self) -> None:
        deltas: list[m.Delta] = []
        finished: list[tuple[Sequence, str, str | None, list | None]] = []
        failed: list[tuple[Sequence, Exception]] = []
        for model_id, runner in list(self.runners.items()):
            if runner.active == 0:
                continue
            t = time.perf_counter()
            try:
                outs = runner.step()
            except Exception as e:  # noqa: BLE001 - the batch's forward failed: its rows fail, the engine goes on
                log.exception("decode step of %s failed", model_id)
                self._reset_runner(model_id, e)
                continue
            self.counters["runner_s"] += time.perf_counter() - t
            self.counters["runner_calls"] += 1
            by_rid = self.scheduler.by_rid
            want = [(o, by_rid[(model_id, o.rid)]) for o in outs if (model_id, o.rid) in by_rid]
            lps = step_logprobs(want)
            now = time.monotonic()
            for out, seq in want:
                try:
                    delta, end = self._on_tokens(runner, seq, out, lps.get(id(out)), now)
                except Exception as e:  # noqa: BLE001 - one sequence's text processing fails that sequence only
                    log.exception("request %s failed after a token", seq.id)
                    self._path_let_go(runner, seq, out)
                    failed.append((seq, e))
                    continue
                if delta is not None:
                    deltas.append(delta)
                if end is not None:
                    finished.append(end)
            self.tokens_out += sum(len(o.tokens) for o, _ in want)
            if want:
                self.steps += 1
                self.peak_batch = max(self.peak_batch, len(want))
        if deltas:
            self.emit(m.Step(deltas))
        for seq, reason, hit, kv in finished:
            self._finish(seq, reason, hit, kv)
        for seq, e in failed:
            self._finish(seq, "error", error=e)
        self.fault.check(self.tokens_out)

    def _on_tokens(self, runner, seq: Sequence, out, lps: list | None, now: float):
        """One step's tokens of one sequence: (its delta or None, its end or None)."""
        self.fault.check_token(seq.id)
        seq.first_token_at = seq.first_token_at or now
        step = seq.output.feed(out.tokens, out.finish_reason, lps)
        seq.out_tokens.extend(out.tokens[:step.used])
        self._path_let_go(runner, seq, out)
        return step.delta, ((seq, step.reason, step.stop, out.cache) if step.reason is not None else None)

    def _path_let_go(self, runner, seq: Sequence, out) -> None:
        """A row its path ended itself (stop token, length) has left it: release its id, once."""
        if out.finish_reason is not None and seq.rid is not None:
            runner.finished(out.rid)
            self.scheduler.dropped(seq)

    def _reset_runner(self, model_id: str, error: Exception) -> None:
        """A model's batch failed as a whole: its running rows end with an error, a fresh runner
        takes the model's waiting requests; other models' batches are untouched."""
        for seq in [s for s in self.scheduler.running() if s.model_id == model_id]:
            self.scheduler.dropped(seq)
            self._finish(seq, "error", error=error)
        try:
            self.models.reset_runner(model_id)
        except RequestError:
            for seq in [s for s in self.scheduler.waiting if s.model_id == model_id]:
                self._finish(seq, "error", error=error)

    def _finish(self, seq: Sequence, reason: str, stop: str | None = None, kv: list | None = None,
                error: Exception | None = None) -> None:
        """Release everything the sequence holds and report its end (an Error when it failed)."""
        if self.seqs.pop(seq.id, None) is None:
            return
        self.scheduler.remove(seq, kv)
        if error is not None:
            self.counters["failed"] += 1
            self.emit(internal(seq.id, error))
            return
        self.counters["aborted" if reason == "abort" else "completed"] += 1
        ttft = (seq.first_token_at - seq.submitted) if seq.first_token_at else 0.0
        self.emit(m.Finished(seq.id, reason, m.Usage(len(seq.prompt), seq.generated, seq.cached_tokens),
                             ttft_s=ttft, total_s=time.monotonic() - seq.submitted, stop=stop))

    def stats(self) -> dict:
        return engine_stats(self)
