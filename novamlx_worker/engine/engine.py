"""The engine thread: admits requests, steps every model's batch, streams deltas out.

One message per step carries the deltas of every sequence that advanced.
"""
from __future__ import annotations

import logging
import queue
import time
from typing import Callable

from protocol import messages as m

from ..models.loader import LoadedModel
from ..sampling import token_logprobs
from ..text.detok import IncrementalDecoder
from ..text.stops import StopMatcher
from .runner import Runner
from .sequence import Sequence

log = logging.getLogger("novamlx.engine")


class RequestError(Exception):
    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


class Engine:
    def __init__(self, models: list[LoadedModel], emit: Callable[[object], None], max_batch: int = 32,
                 prefill_step: int = 512):
        self.models = {lm.id: lm for lm in models}
        self.runners = {lm.id: Runner(lm, max_batch=max_batch, prefill_step=prefill_step) for lm in models}
        self.emit = emit
        self.inbox: queue.Queue = queue.Queue()
        self.seqs: dict[str, Sequence] = {}
        self.by_uid: dict[tuple[str, int], Sequence] = {}
        self.stopping = False
        self.heartbeat = time.monotonic()
        self.tokens_out = 0  # generated tokens since start, for the health push
        self.steps = 0
        self.peak_batch = 0

    # ---- the loop ----
    def run(self) -> None:
        while not self.stopping:
            self.heartbeat = time.monotonic()
            self._drain(block=not self.seqs)
            if self.seqs:
                self._step()

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

    def _handle(self, cmd) -> None:
        if isinstance(cmd, m.Generate):
            try:
                self._admit(cmd)
            except RequestError as e:
                self.emit(m.Error(cmd.id, str(e), e.status, e.code, e.param))
        elif isinstance(cmd, m.Abort):
            seq = self.seqs.get(cmd.id)
            if seq is not None:
                self.runners[seq.model_id].remove(seq.uid)
                self._finish(seq, "abort")
        elif isinstance(cmd, m.CountTokens):
            try:
                lm = self._model(cmd.model)
                ids = self._prompt_ids(lm, cmd.messages, cmd.prompt, None)
                self.emit(m.Result(cmd.id, tokens=len(ids)))
            except RequestError as e:
                self.emit(m.Error(cmd.id, str(e), e.status, e.code, e.param))
        elif isinstance(cmd, m.Ping):
            self.emit(m.Pong(cmd.nonce))
        elif isinstance(cmd, m.Shutdown):
            self.stopping = True

    # ---- admission ----
    def _model(self, name: str) -> LoadedModel:
        lm = self.models.get(name)
        if lm is None:
            raise RequestError(f"The model `{name}` does not exist.", 404, "model_not_found", "model")
        return lm

    @staticmethod
    def _prompt_ids(lm: LoadedModel, messages, prompt, prompt_tokens) -> list[int]:
        tok = lm.tokenizer
        if messages is not None:
            try:
                return tok.encode_chat([{"role": x.role, "content": x.content or ""} for x in messages])
            except Exception as e:  # a template that rejects the conversation (jinja raise_exception)
                raise RequestError(f"The chat template rejected the messages: {e}", 400, "invalid_messages", "messages")
        if prompt_tokens is not None:
            bad = [t for t in prompt_tokens if not 0 <= t < tok.vocab_size]
            if bad:
                raise RequestError(f"Token id {bad[0]} is outside the vocabulary (0..{tok.vocab_size - 1}).", 400, None, "prompt")
            return list(prompt_tokens)
        return tok.encode(prompt or "")

    def _admit(self, cmd: m.Generate) -> None:
        lm = self._model(cmd.model)
        ids = self._prompt_ids(lm, cmd.messages, cmd.prompt, cmd.prompt_tokens)
        if not ids:
            if lm.tokenizer.bos_id is None:
                raise RequestError("The prompt is empty.", 400, None, "prompt")
            ids = [lm.tokenizer.bos_id]
        room = lm.context_length - len(ids)
        s = cmd.sampling
        if room <= 0 or (s.max_tokens is not None and s.max_tokens > room):
            asked = f" However, you requested {len(ids) + (s.max_tokens or 0)} tokens ({len(ids)} in the prompt, {s.max_tokens or 0} in the completion)." if s.max_tokens else f" However, your prompt has {len(ids)} tokens."
            raise RequestError(f"This model's maximum context length is {lm.context_length} tokens.{asked} "
                               "Please reduce the length of the prompt or the completion.",
                               400, "context_length_exceeded", "messages" if cmd.messages is not None else "prompt")
        if cmd.id in self.seqs:
            raise RequestError(f"duplicate request id {cmd.id}", 400)
        seq = Sequence(cmd.id, lm.id, ids, s, s.max_tokens or room,
                       IncrementalDecoder(lm.tokenizer.decode), StopMatcher(s.stop))
        self.emit(m.Started(cmd.id, prompt_tokens=len(ids)))
        if cmd.echo:
            self.emit(m.Step([self._echo_delta(lm, seq)]))
        runner = self.runners[lm.id]
        seq.uid = runner.add(seq)
        self.seqs[seq.id] = seq
        self.by_uid[(lm.id, seq.uid)] = seq

    def _echo_delta(self, lm: LoadedModel, seq: Sequence) -> m.Delta:
        text = lm.tokenizer.decode(seq.prompt)
        if not seq.sampling.logprobs:
            return m.Delta(seq.id, text=text, echo=True)
        rows = self.runners[lm.id].prompt_logprobs(seq.prompt)
        scored = token_logprobs(rows, seq.prompt[1:], [seq.top_logprobs] * len(rows))
        tok = lm.tokenizer
        first = m.TokenLogprob(tok.token_text(seq.prompt[0]), None, list(tok.token_bytes(seq.prompt[0])))
        rest = [self._logprob_entry(tok, t, lp, alts) for t, (lp, alts) in zip(seq.prompt[1:], scored)]
        return m.Delta(seq.id, text=text, logprobs=[first, *rest], echo=True)

    @staticmethod
    def _logprob_entry(tok, token: int, logprob: float, alts) -> m.TokenLogprob:
        top = [m.TopLogprob(tok.token_text(t), v, list(tok.token_bytes(t))) for t, v in alts]
        return m.TokenLogprob(tok.token_text(token), logprob, list(tok.token_bytes(token)), top)

    # ---- one step ----
    def _step(self) -> None:
        deltas: list[m.Delta] = []
        finished: list[tuple[Sequence, str, str | None]] = []
        for model_id, runner in self.runners.items():
            if runner.active == 0:
                continue
            outs = runner.step()
            want = [(o, self.by_uid[(model_id, o.uid)]) for o in outs if (model_id, o.uid) in self.by_uid]
            scored = token_logprobs([o.logprobs for o, s in want if s.sampling.logprobs],
                                    [o.token for o, s in want if s.sampling.logprobs],
                                    [s.top_logprobs for o, s in want if s.sampling.logprobs])
            scored_iter = iter(scored)
            tok = self.models[model_id].tokenizer
            now = time.monotonic()
            for out, seq in want:
                seq.generated += 1
                seq.first_token_at = seq.first_token_at or now
                is_eos = out.finish_reason == "stop"
                lp_entry = None
                if seq.sampling.logprobs:
                    lp, alts = next(scored_iter)
                    if not is_eos:  # the stop token is not part of the answer
                        lp_entry = [self._logprob_entry(tok, out.token, lp, alts)]
                text = "" if is_eos else seq.decoder.add(out.token)
                text, hit = seq.stops.feed(text)
                reason = out.finish_reason
                if hit is not None:
                    reason = "stop"
                    if out.finish_reason is None:
                        runner.remove(out.uid)
                    else:
                        runner.finished(out.uid)
                elif reason is not None:
                    runner.finished(out.uid)
                    tail, _ = seq.stops.feed(seq.decoder.flush()) if not is_eos else ("", None)
                    text += tail + seq.stops.flush()
                if text or lp_entry:
                    deltas.append(m.Delta(seq.id, text=text, logprobs=lp_entry))
                if reason is not None:
                    finished.append((seq, reason, hit))
            self.tokens_out += len(want)
            if want:
                self.steps += 1
                self.peak_batch = max(self.peak_batch, len(want))
        if deltas:
            self.emit(m.Step(deltas))
        for seq, reason, hit in finished:
            self._finish(seq, reason, hit)

    def _finish(self, seq: Sequence, reason: str, stop: str | None = None) -> None:
        self.seqs.pop(seq.id, None)
        self.by_uid.pop((seq.model_id, seq.uid), None)
        now = time.monotonic()
        ttft = (seq.first_token_at - seq.submitted) if seq.first_token_at else 0.0
        self.emit(m.Finished(seq.id, reason, m.Usage(len(seq.prompt), seq.generated),
                             ttft_s=ttft, total_s=now - seq.submitted, stop=stop))
