"""The engine thread: admits requests, steps every model's batch, streams deltas out.

One message per step carries the deltas of every sequence that advanced. Admission
reserves each sequence's KV bytes against the budget the memory limit leaves after the
weights; a request that can never fit is refused, one that can fit later waits.
"""
from __future__ import annotations

import logging
import os
import queue
import time
from typing import Callable

from protocol import messages as m

from ..faults import FaultSwitch, scripted_output
from ..grammar import GrammarError, compile_format, tool_call_grammar
from ..memory import MemoryEnforcer
from ..models.loader import LoadedModel
from ..models.pool import ModelPool, kv_bytes_per_token, weight_bytes
from ..sampling import token_logprobs
from ..text.chat import encode_messages
from ..text.reasoning import ReasoningSplitter
from ..text.tool_parsers import ToolCallParser, families_for
from .errors import RequestError, internal
from .jobs import Jobs
from .output import Output, logprob_entry
from .prefix_cache import PrefixCache
from .runner import Runner
from .vision_runner import VisionRunner
from .scheduler import Item, plan
from .sequence import Sequence
from .ssd_cache import SSDTier

log = logging.getLogger("novamlx.engine")

# Sharded mode: decode iterations between two command exchanges among the ranks.
SHARE_EVERY = int(os.environ.get("NOVAMLX_SHARE_EVERY", "8"))

# Memory the process needs besides weights and KV (Python, MLX scratch, activations).
OVERHEAD_BYTES = 512 * 1024**2


class Engine:
    def __init__(self, pool: ModelPool, emit: Callable[[object], None], memory: MemoryEnforcer,
                 max_batch: int = 32, prefill_step: int = 512, prefill_batch: int = 16, default_max_tokens: int = 4096,
                 kv_budget_cap: int = 0, block_size: int = 64, prefix_cache_bytes: int = 2 * 1024**3,
                 ssd: SSDTier | None = None, embedders: list | None = None, tool_parser: str = "auto",
                 turn_stops: list[str] | None = None, lockstep=None):
        self.pool = pool
        self.lockstep = lockstep  # a sharded model's ranks: rank 0 decides, the others follow (lockstep.py)
        self.iterations = 0
        self.next_memory_gather = 0.0
        self.memory = memory
        self.emit = emit
        self.max_batch, self.prefill_step, self.prefill_batch = max_batch, prefill_step, prefill_batch
        self.default_max_tokens = default_max_tokens
        self.kv_budget_cap = kv_budget_cap
        self.block_size, self.prefix_cache_bytes, self.ssd = block_size, prefix_cache_bytes, ssd
        self.embedders = {e.id: e for e in embedders or []}
        self.embedder_paths: dict[str, m.Found] = {}  # registered from disk, loaded on first use
        self.next_expiry_check = 0.0
        self.tool_parser = tool_parser
        self.turn_stops = list(turn_stops or [])  # text patterns that end a turn, for every request
        # Off by default: on the H100 run gathering 5 ms halved 128-stream throughput (2,185 -> 1,133 tok/s).
        self.gather_s = float(os.environ.get("NOVAMLX_GATHER_MS", "0")) / 1000
        self.runners: dict[str, Runner] = {}
        self.caches: dict[str, PrefixCache] = {}
        self.inbox: queue.Queue = queue.Queue()
        self.seqs: dict[str, Sequence] = {}  # every accepted, unfinished sequence
        self.waiting: list[Sequence] = []  # accepted, not in a batch (new or preempted)
        self.counters = {"queued": 0, "completed": 0, "preempted": 0, "aborted": 0, "peak_active": 0, "failed": 0,
                         "wait_s_total": 0.0, "started": 0, "runner_s": 0.0, "runner_calls": 0, "step_s": 0.0}
        self.by_rid: dict[tuple[str, int], Sequence] = {}
        self.kv_reserved = 0
        self.stopping = False
        self.heartbeat = time.monotonic()
        self.tokens_out = 0  # generated tokens since start, for the health push
        self.rate_state: dict = {}  # tokens and time at the last health push (health.snapshot)
        self.steps = 0
        self.peak_batch = 0
        self.fault = FaultSwitch()
        self.jobs = Jobs(emit)  # embedding and reranking, a batch at a time between decode steps

    @property
    def models(self) -> list[str]:
        return [lm.id for lm in self.pool.loaded()]

    # ---- the loop ----
    def run(self) -> None:
        while not self.stopping:
            self.heartbeat = time.monotonic()
            if self.lockstep is None:
                self.memory.poll(self._evict_one)
                self._expire()
                self._drain(block=not self.seqs and not self.jobs)
            else:
                self._drain_in_step()
            self.step()

    def step(self) -> None:
        """One turn: admit what fits, one decode step of every model's batch, one piece of
        embedding work. Commands are taken before (run's drain, or the tests')."""
        self._schedule()
        if any(r.active for r in self.runners.values()):
            t = time.perf_counter()
            self._step()
            self.counters["step_s"] += time.perf_counter() - t
        if self.jobs:
            self.jobs.advance()

    def _drain(self, block: bool) -> None:
        try:
            cmd = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(cmd)
            try:
                cmd = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _drain_in_step(self) -> None:
        """Sharded: rank 0 takes commands from the pipe and every rank handles the same ones.
        While sequences decode, commands are shared every SHARE_EVERY iterations only: sharing
        waits for the queued forward, so doing it each step would undo the overlap of one step's
        Python with the next step's compute (on 2 H100s: 63 tok/s instead of 148 at one stream).
        Every rank skips the same iterations: their state is the same.
        (Memory eviction and TTL unloads are off here: they would need a decision all ranks share.)"""
        self.iterations += 1
        if self.seqs and self.iterations % SHARE_EVERY:
            return
        cmds = []
        if self.lockstep.rank == 0:
            try:
                cmds.append(self.inbox.get(timeout=0.5) if not self.seqs else self.inbox.get_nowait())
                while True:
                    cmds.append(self.inbox.get_nowait())
            except queue.Empty:
                pass
            now = time.monotonic()
            if now >= self.next_memory_gather:
                self.lockstep.want_memory, self.next_memory_gather = True, now + 1.0
        streams = [r.batch.stream for r in self.runners.values() if hasattr(r, "batch")]
        for cmd in self.lockstep.share(cmds, streams):
            self._handle(cmd)

    def _handle(self, cmd) -> None:
        try:
            if isinstance(cmd, m.Generate):
                self._accept(cmd)
            elif isinstance(cmd, m.Abort):
                seq = self.seqs.get(cmd.id)
                if seq is not None:
                    self._finish(seq, "abort")
                elif self.jobs.abort(cmd.id):
                    self.counters["aborted"] += 1
            elif isinstance(cmd, m.CountTokens):
                lm = self._model(cmd.model)
                if lm.vision is not None:
                    count = self._vision_inputs(lm, cmd).input_ids.shape[1]
                else:
                    count = len(self._prompt_ids(lm, cmd.messages, cmd.prompt, None, cmd.tools))
                self.emit(m.Result(cmd.id, tokens=count))
            elif isinstance(cmd, (m.Embed, m.Rerank)):
                self._embed(cmd)
            elif isinstance(cmd, m.Settings):
                if cmd.max_process_memory is not None:
                    try:
                        self.memory.set_limit(cmd.max_process_memory)
                    except ValueError as e:
                        raise RequestError(str(e), "invalid_value", "max_process_memory") from None
                    self.memory.poll(self._evict_one, force=True)
                self.emit(m.Result(cmd.id, data=self.memory_state()))
            elif isinstance(cmd, m.LoadModel):
                try:
                    entry = self.pool.add(cmd.spec, cmd.pin)
                except FileNotFoundError as e:
                    raise RequestError(str(e), "model_not_found", "model") from None
                self._model(entry.id)
                self.emit(m.Models(self.model_infos()))
                self.emit(m.Result(cmd.id, data={"id": entry.id, "loaded": True}))
            elif isinstance(cmd, m.UnloadModel):
                entry = self._idle_entry(cmd.model)
                if entry.loaded is not None:
                    self._drop(entry.id)
                self.emit(m.Result(cmd.id, data={"id": entry.id, "loaded": False}))
            elif isinstance(cmd, m.Register):
                ids = [self._register(f) for f in cmd.models]
                self.emit(m.Models(self.model_infos()))
                self.emit(m.Result(cmd.id, data={"registered": [i for i in ids if i]}))
            elif isinstance(cmd, m.Forget):
                if cmd.model in self.embedders or cmd.model in self.embedder_paths:
                    self.embedders.pop(cmd.model, None)
                    self.embedder_paths.pop(cmd.model, None)
                else:
                    entry = self._idle_entry(cmd.model)
                    if entry.loaded is not None:
                        self._drop(entry.id)
                    self.pool.forget(entry.id)
                self.emit(m.Models(self.model_infos()))
                self.emit(m.Result(cmd.id, data={"id": cmd.model, "forgotten": True}))
            elif isinstance(cmd, m.Policies):
                for e in self.pool.entries.values():
                    p = cmd.models.get(e.id) or m.Policy()
                    e.ttl, e.policy_pinned, e.max_context = float(p.ttl_seconds), p.pinned, p.max_context_window
                self.emit(m.Result(cmd.id, data={"applied": sorted(cmd.models)}))
            elif isinstance(cmd, m.Ping):
                self.emit(m.Pong(cmd.nonce))
            elif isinstance(cmd, m.Shutdown):
                self.stopping = True
        except RequestError as e:
            self.emit(e.event(cmd.id))
        except Exception as e:  # noqa: BLE001 - one command's failure is its own error, never the engine's end
            log.exception("command %s failed", type(cmd).__name__)
            rid = getattr(cmd, "id", None)
            if isinstance(rid, str):
                self.emit(internal(rid, e))

    # ---- embeddings and reranking (run between decode steps, on this thread) ----
    def _idle_entry(self, name: str):
        entry = self.pool.find(name)
        if entry is None:
            raise RequestError(f"No model `{name}`.", "model_not_found", "model")
        if any(s.model_id == entry.id for s in self.seqs.values()):
            raise RequestError(f"Model `{entry.id}` is serving requests; retry when they finish.", "model_busy",
                               "model")
        return entry

    def _register(self, found: m.Found) -> str | None:
        """A model found on disk becomes servable (loaded on first use). Returns its id."""
        from protocol.naming import model_id_for

        model_id = model_id_for(found.path)
        if found.kind in ("embedding", "rerank"):
            if model_id not in self.embedders:
                self.embedder_paths[model_id] = found
            return model_id
        if found.kind not in ("llm", "vlm"):
            return None
        try:
            return self.pool.add(found.path).id
        except FileNotFoundError as e:
            log.warning("cannot register %s: %s", found.path, e)
            return None

    def _embedder(self, name: str):
        emb = self.embedders.get(name)
        if emb is None and name in self.embedder_paths:
            from ..models.embedder import load_embedder

            try:
                emb = self.embedders[name] = load_embedder(self.embedder_paths.pop(name).path, name)
            except Exception as e:  # noqa: BLE001 - a broken folder fails this request, not the worker
                log.exception("loading %s failed", name)
                raise RequestError(f"Loading model `{name}` failed: {e}", "model_load_failed") from None
        return emb

    def _embed(self, cmd) -> None:
        emb = self._embedder(cmd.model)
        if emb is None:
            raise RequestError(f"The model `{cmd.model}` is not an embedding or reranking model.",
                               "invalid_model", "model")
        if isinstance(cmd, m.Embed):
            self.jobs.add(cmd.id, emb.embed_steps(cmd.texts, cmd.tokens, cmd.truncate),
                          lambda done: m.Embeddings(cmd.id, done[0].tolist(), done[1]))
        else:
            self.jobs.add(cmd.id, emb.rerank_steps(cmd.query, cmd.documents), lambda done: m.Scores(cmd.id, *done))

    def model_infos(self) -> list[m.ModelInfo]:
        llms = [m.ModelInfo(e.id, e.kind, e.context_length, e.created, e.path, e.aliases, e.loaded is not None)
                for e in self.pool.entries.values()]
        embedders = [m.ModelInfo(e.id, e.kind, e.max_len, e.created, e.path, e.aliases) for e in self.embedders.values()]
        on_disk = [m.ModelInfo(i, f.kind, 0, 0, f.path, [], False) for i, f in self.embedder_paths.items()]
        return llms + embedders + on_disk

    # ---- memory ----
    def kv_budget(self) -> int:
        weights = sum(weight_bytes(lm) for lm in self.pool.loaded())
        budget = max(self.memory.limit - weights - OVERHEAD_BYTES, 0)
        return min(budget, self.kv_budget_cap) if self.kv_budget_cap else budget

    def _kv_cost(self, items: list[Item]) -> int:
        """KV bytes a set of running sequences holds at most, per model as its batch holds them
        (a slot batch sizes every slot for its longest row); other runners hold each row's own."""
        by_model: dict[str, list[int]] = {}
        for i in items:
            by_model.setdefault(i.model, []).append(i.kv_bytes)
        total = 0
        for mid, kv in by_model.items():
            batch = getattr(self.runners.get(mid), "batch", None)
            total += batch.kv_cost(kv) if batch else sum(kv)
        return total

    def memory_state(self) -> dict:
        return {**self.memory.state(), "kv_budget_bytes": self.kv_budget(), "kv_reserved_bytes": self.kv_reserved,
                "models_loaded": self.models}

    def _drop(self, model_id: str) -> None:
        """Unload a model's weights, batch and prefix cache (its blocks go to the SSD tier)."""
        self.runners.pop(model_id, None)
        cache = self.caches.pop(model_id, None)
        if cache is not None:
            cache.clear()
        self.pool.evict(model_id)
        self.emit(m.Models(self.model_infos()))

    def _evict_one(self) -> bool:
        victim = self.pool.lru_evictable({s.model_id for s in self.seqs.values()})
        if victim is None:
            return False
        self._drop(victim)
        return True

    def _expire(self) -> None:
        """Unload models idle past their ttl_seconds (checked once a second)."""
        now = time.monotonic()
        if now < self.next_expiry_check:
            return
        self.next_expiry_check = now + 1.0
        expired = self.pool.expired({s.model_id for s in self.seqs.values()}, now)
        for model_id in expired:
            log.info("unloading %s: idle past its ttl", model_id)
            self._drop(model_id)

    # ---- admission ----
    def _model(self, name: str) -> LoadedModel:
        entry = self.pool.find(name)
        if entry is None:
            raise RequestError(f"The model `{name}` does not exist.", "model_not_found", "model")
        if entry.loaded is None and self.memory.refusing:
            raise self._over_memory()
        was_loaded = entry.loaded is not None
        try:
            lm = self.pool.get(entry.id)
        except Exception as e:  # noqa: BLE001 - a failed (re)load is this request's error, not the worker's death
            log.exception("loading %s failed", entry.id)
            raise RequestError(f"Loading model `{entry.id}` failed: {e}", "model_load_failed") from None
        if not was_loaded:
            self.emit(m.Models(self.model_infos()))
        if entry.id not in self.runners and lm.vision is not None:
            self.runners[entry.id] = VisionRunner(lm, self.prefill_step)
        elif entry.id not in self.runners:
            runner = self.runners[entry.id] = Runner(lm, max_batch=self.max_batch, prefill_step=self.prefill_step,
                                                       prefill_batch=self.prefill_batch)
            if runner.cacheable and self.prefix_cache_bytes > 0:
                self.caches[entry.id] = PrefixCache(entry.id, self.block_size, self.prefix_cache_bytes, self.ssd)
        return lm

    def _window(self, lm: LoadedModel) -> int:
        entry = self.pool.entries.get(lm.id)
        return min(lm.context_length, entry.max_context) if entry and entry.max_context else lm.context_length

    def _over_memory(self) -> RequestError:
        st = self.memory.state()
        return RequestError(f"The server is out of memory: the process uses {st['used_bytes'] / 1024**3:.2f} GB of its "
                            f"{st['limit_bytes'] / 1024**3:.2f} GB limit ({st['mode']}). Retry later.", "out_of_memory")

    @staticmethod
    def _prompt_ids(lm: LoadedModel, messages, prompt, prompt_tokens, tools=None, template_kwargs=None) -> list[int]:
        tok = lm.tokenizer
        if messages is not None:
            try:
                return encode_messages(tok, messages, tools, template_kwargs)
            except Exception as e:  # a template that rejects the conversation (jinja raise_exception)
                raise RequestError(f"The chat template rejected the messages: {e}", "invalid_messages", "messages")
        if prompt_tokens is not None:
            bad = [t for t in prompt_tokens if not 0 <= t < tok.vocab_size]
            if bad:
                raise RequestError(f"Token id {bad[0]} is outside the vocabulary (0..{tok.vocab_size - 1}).", "invalid_value", "prompt")
            return list(prompt_tokens)
        return tok.encode(prompt or "")

    @staticmethod
    def _vision_inputs(lm: LoadedModel, cmd: m.Generate):
        from ..models.vision import images_of, prepare, render_prompt

        if getattr(cmd, "prompt_tokens", None) is not None:
            raise RequestError("Token-id prompts are not supported for vision-language models.", "invalid_value", "prompt")
        try:
            if cmd.messages is not None:
                kw = dict(getattr(cmd, "template_kwargs", None) or {}, **({"tools": cmd.tools} if cmd.tools else {}))
                prompt, images = render_prompt(lm.vision, cmd.messages, kw), images_of(cmd.messages)
            else:
                prompt, images = cmd.prompt or "", []
            return prepare(lm.model, lm.vision, prompt, images)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise RequestError(f"The images or prompt could not be processed for `{lm.id}`: {e}", "invalid_image",
                               "messages") from None

    def _accept(self, cmd: m.Generate) -> None:
        if self.memory.refusing:
            raise self._over_memory()
        if cmd.id in self.seqs:
            raise RequestError(f"duplicate request id {cmd.id}", "invalid_request")
        self.fault.check_request(cmd.id, cmd.messages)
        lm = self._model(cmd.model)
        vision = None
        if lm.vision is not None:  # (images reach only VLMs: the gateway refuses them for other models)
            if cmd.echo and cmd.sampling.logprobs:
                raise RequestError("echo with logprobs is not available for vision-language models.", "invalid_value",
                                   "echo")
            vision = self._vision_inputs(lm, cmd)
            ids = vision.input_ids[0].tolist()
        else:
            ids = self._prompt_ids(lm, cmd.messages, cmd.prompt, cmd.prompt_tokens, cmd.tools, cmd.template_kwargs)
        if not ids:
            if lm.tokenizer.bos_id is None:
                raise RequestError("The prompt is empty.", "invalid_value", "prompt")
            ids = [lm.tokenizer.bos_id]
        window = self._window(lm)
        room = window - len(ids)
        s = cmd.sampling
        if room <= 0 or (s.max_tokens is not None and s.max_tokens > room and not cmd.fit_max_tokens):
            asked = (f" However, you requested {len(ids) + s.max_tokens} tokens ({len(ids)} in the prompt, {s.max_tokens} "
                     "in the completion)." if s.max_tokens else f" However, your prompt has {len(ids)} tokens.")
            raise RequestError(f"This model's maximum context length is {window} tokens.{asked} "
                               "Please reduce the length of the prompt or the completion.",
                               "context_length_exceeded", "messages" if cmd.messages is not None else "prompt")
        max_tokens = min(s.max_tokens, room) if s.max_tokens else min(room, self.default_max_tokens)
        tools = ToolCallParser(families_for(lm.tokenizer.chat_template, self.tool_parser)) if cmd.parse_tools else None
        reasoning = None
        if cmd.messages is not None and not s.response_format:
            opened = lm.tokenizer.decode(ids[-3:]).rstrip().endswith("<think>")  # the template opened it
            reasoning = ReasoningSplitter(implicit_open=opened)
        output = Output(cmd.id, lm.tokenizer, s.stop + self.turn_stops, reasoning, tools)
        seq = Sequence(cmd.id, lm.id, ids, s, max_tokens, output, priority=cmd.priority, vision=vision)
        seq.kv_bytes = (len(ids) + max_tokens) * kv_bytes_per_token(lm)
        try:
            if cmd.force_tool:
                seq.grammar = tool_call_grammar(cmd.tools, cmd.force_tool)
            elif s.response_format:
                seq.grammar = compile_format(s.response_format)
        except GrammarError as e:
            param = "tool_choice" if cmd.force_tool else "response_format"
            raise RequestError(str(e), f"invalid_{param}", param) from None
        script = scripted_output(cmd.messages)
        if script is not None:
            eos = lm.tokenizer.eos_ids[-1:] or [0]
            seq.script = lm.tokenizer.encode(script, add_special=False) + eos
        budget = self.kv_budget()
        if seq.kv_bytes > budget:
            raise RequestError(
                f"This request needs {seq.kv_bytes / 1024**2:.1f} MB of KV cache ({len(ids)} prompt + {max_tokens} "
                f"completion tokens), more than the {budget / 1024**2:.1f} MB this server can ever give one request "
                f"under its memory limit. Lower max_tokens or shorten the prompt.", "kv_budget_exceeded", "max_tokens")
        pc = self.caches.get(lm.id)  # what the prefix cache holds now: the client's usage reports it up front
        self.emit(m.Started(cmd.id, prompt_tokens=len(ids), cached_tokens=pc.peek(ids) if pc is not None else 0))
        if cmd.echo:
            self.emit(m.Step([self._echo_delta(lm, seq)]))
        self.seqs[seq.id] = seq
        self.waiting.append(seq)
        self.counters["queued"] += 1

    # ---- scheduling ----
    def _schedule(self) -> None:
        if not self.waiting:
            return
        running = [s for s in self.seqs.values() if s.rid is not None]
        if running and self.gather_s > 0 and len(self.waiting) < self.prefill_batch:
            # While others decode, let a burst of arrivals gather for a few ms so their prompts are
            # prefilled together: fewer, larger prefill batches (and fewer new shapes to compile).
            newest = max(s.submitted for s in self.waiting)
            if time.monotonic() - newest < self.gather_s:
                return
        item = lambda s: Item(s.id, s.priority, s.submitted, s.kv_bytes, s.model_id)  # noqa: E731
        decided = plan([item(s) for s in self.waiting], [item(s) for s in running], self.max_batch,
                       self.kv_budget(), self._kv_cost)
        for rid in decided.preempt:
            self._preempt(self.seqs[rid])
        for rid in decided.admit:
            self._start(self.seqs[rid])

    def _start(self, seq: Sequence) -> None:
        """Into the batch, reusing the longest cached prefix of everything it has seen."""
        self.waiting.remove(seq)
        runner = self.runners[seq.model_id]
        pc = self.caches.get(seq.model_id)
        kv = None
        if pc is not None:
            seq.blocks = pc.match(seq.tokens)
            if seq.blocks:
                pc.acquire(seq.blocks)
                kv = pc.build(seq.blocks)
                if seq.preemptions == 0:
                    seq.cached_tokens = len(seq.blocks) * pc.block_size
        seq.rid = runner.add(seq, kv)
        self.by_rid[(seq.model_id, seq.rid)] = seq
        self.kv_reserved += seq.kv_bytes
        if seq.preemptions == 0:
            self.counters["started"] += 1
            self.counters["wait_s_total"] += time.monotonic() - seq.submitted
        active = sum(1 for s in self.seqs.values() if s.rid is not None)
        self.counters["peak_active"] = max(self.counters["peak_active"], active)

    def _leave_batch(self, seq: Sequence, kv: list | None = None) -> None:
        """Out of the batch: its KV goes to the prefix cache, its reservations are released."""
        if seq.rid is not None:
            removed = self.runners[seq.model_id].remove(seq.rid)
            kv = kv or removed
            self.by_rid.pop((seq.model_id, seq.rid), None)
            seq.rid = None
        self.kv_reserved -= seq.kv_bytes
        pc = self.caches.get(seq.model_id)
        if pc is not None:
            if kv and seq.generated > 0:  # only decode-stage KV is whole and unpadded
                pc.store(seq.tokens, kv)
            pc.release(seq.blocks)
        seq.blocks = []

    def _preempt(self, seq: Sequence) -> None:
        self._leave_batch(seq)
        seq.preemptions += 1
        self.counters["preempted"] += 1
        self.waiting.append(seq)

    def _echo_delta(self, lm: LoadedModel, seq: Sequence) -> m.Delta:
        text = lm.tokenizer.decode(seq.prompt)
        if not seq.sampling.logprobs:
            return m.Delta(seq.id, text=text, echo=True)
        rows = self.runners[lm.id].prompt_logprobs(seq.prompt)
        scored = token_logprobs(rows, seq.prompt[1:], [seq.top_logprobs] * len(rows))
        tok = lm.tokenizer
        first = m.TokenLogprob(tok.token_text(seq.prompt[0]), None, list(tok.token_bytes(seq.prompt[0])))
        rest = [logprob_entry(tok, t, lp, alts) for t, (lp, alts) in zip(seq.prompt[1:], scored)]
        return m.Delta(seq.id, text=text, logprobs=[first, *rest], echo=True)

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
            want = [(o, self.by_rid[(model_id, o.rid)]) for o in outs if (model_id, o.rid) in self.by_rid]
            logprob_rows = [(o, s) for o, s in want if s.sampling.logprobs]
            scored = iter(token_logprobs([o.logprobs for o, _ in logprob_rows], [o.token for o, _ in logprob_rows],
                                         [s.top_logprobs for _, s in logprob_rows]))
            now = time.monotonic()
            for out, seq in want:
                lp = next(scored) if seq.sampling.logprobs else None
                try:
                    delta, end = self._on_token(runner, seq, out, lp, now)
                except Exception as e:  # noqa: BLE001 - one sequence's text processing fails that sequence only
                    log.exception("request %s failed after a token", seq.id)
                    if out.finish_reason is not None and seq.rid is not None:  # the batch already dropped it
                        runner.finished(out.rid)
                        self.by_rid.pop((model_id, out.rid), None)
                        seq.rid = None
                    failed.append((seq, e))
                    continue
                if delta is not None:
                    deltas.append(delta)
                if end is not None:
                    finished.append(end)
            self.tokens_out += len(want)
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

    def _on_token(self, runner, seq: Sequence, out, lp, now: float):
        """One new token of one sequence: (its delta or None, its end or None)."""
        self.fault.check_token(seq.id)
        seq.out_tokens.append(out.token)
        seq.first_token_at = seq.first_token_at or now
        step = seq.output.feed([out.token], out.finish_reason, None if lp is None else [lp])
        if step.reason is not None and out.finish_reason is not None:  # the batch already dropped it
            runner.finished(out.rid)
            self.by_rid.pop((seq.model_id, out.rid), None)
            seq.rid = None
        return step.delta, ((seq, step.reason, step.stop, out.cache) if step.reason is not None else None)

    def _reset_runner(self, model_id: str, error: Exception) -> None:
        """A model's batch failed as a whole: its running rows end with an error, a fresh runner
        takes the model's waiting requests; other models' batches are untouched."""
        rows = [s for s in self.seqs.values() if s.model_id == model_id and s.rid is not None]
        for seq in rows:
            self.by_rid.pop((model_id, seq.rid), None)
            seq.rid = None
            self._finish(seq, "error", error=error)
        self.runners.pop(model_id, None)
        try:
            self._model(model_id)
        except RequestError:
            for seq in [s for s in self.waiting if s.model_id == model_id]:
                self._finish(seq, "error", error=error)

    def _finish(self, seq: Sequence, reason: str, stop: str | None = None, kv: list | None = None,
                error: Exception | None = None) -> None:
        """Release everything the sequence holds and report its end (an Error when it failed)."""
        if self.seqs.pop(seq.id, None) is None:
            return
        if any(w is seq for w in self.waiting):
            self.waiting.remove(seq)
        else:
            self._leave_batch(seq, kv)
        if error is not None:
            self.counters["failed"] += 1
            self.emit(internal(seq.id, error))
            return
        self.counters["aborted" if reason == "abort" else "completed"] += 1
        ttft = (seq.first_token_at - seq.submitted) if seq.first_token_at else 0.0
        self.emit(m.Finished(seq.id, reason, m.Usage(len(seq.prompt), seq.generated, seq.cached_tokens),
                             ttft_s=ttft, total_s=time.monotonic() - seq.submitted, stop=stop))

    def stats(self) -> dict:
        c = dict(self.counters)  # read from the health thread: take snapshots, not live views
        active = sum(1 for s in list(self.seqs.values()) if s.rid is not None)
        engine = {"active": active, "queue_depth": len(self.waiting), "total_queued": c["queued"],
                  "total_completed": c["completed"], "total_preempted": c["preempted"], "total_aborted": c["aborted"],
                  "total_failed": c["failed"], "jobs": len(self.jobs.queue),
                  "peak_active": c["peak_active"], "avg_wait_s": round(c["wait_s_total"] / max(c["started"], 1), 4),
                  "max_batch": self.max_batch,
                  # where the engine thread's time goes: inside the runners (forwards, waiting on the
                  # device) vs the whole step (plus detokenizing, stops, parsers, the Step line)
                  "runner_s": round(c["runner_s"], 3), "runner_calls": c["runner_calls"], "step_s": round(c["step_s"], 3)}
        engine["batches"] = {mid: r.batch.info() for mid, r in list(self.runners.items()) if hasattr(r, "batch")}
        cache = {mid: pc.snapshot() for mid, pc in list(self.caches.items())}
        cache["vision_features"] = self.pool.features.stats()
        for e in list(self.pool.entries.values()):
            lm = e.loaded
            if lm is not None and lm.vision is not None:
                cache[lm.id] = lm.vision.prompts.stats()
        if self.ssd is not None:
            cache["ssd"] = {"blocks": len(self.ssd.index), "bytes": self.ssd.bytes, "reads": self.ssd.reads,
                            "writes": self.ssd.writes, "corrupt_dropped": self.ssd.corrupt}
        return {"engine": engine, "prefix_cache": cache}
