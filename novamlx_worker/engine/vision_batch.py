"""The decode path of a vision-language model: each prompt (images included) prefilled alone,
then every running request of the model decoding in one batched forward per step.

mlx-vlm keeps a prompt's mRoPE state (Qwen-VL's position delta) on the language model
object, which would let only one sequence run at a time. Here the delta is read off the model
right after a row's prefill and kept per row; each batched step hands the model all rows'
deltas (its `rope_deltas` argument), so positions follow each row, not the last prefill.
The rows' caches are mlx-vlm's batch caches (left-padded KV, rotating windows), merged as a
row joins and filtered as one leaves. One prompt is prefilled per step, between decode steps,
so running rows keep streaming while a new image is read.
"""
from __future__ import annotations

from collections import deque

import mlx.core as mx

from ..models.loader import LoadedModel
from ..sampling import make_sampler
from .batch import Row, pick_tokens
from .kv import held
from .path import TokenOut, finish_for
from .runner import processors_for
from .sequence import Sequence


def prefill(model, ids: mx.array, pixels, mask, cache: list, kwargs: dict, step: int) -> mx.array:
    """Feed a prompt (its images through the vision tower) into `cache` in chunks of `step`,
    as mlx-vlm's generate_step does; returns the last position's logits [1, vocab]."""
    from mlx_vlm.generate.common import _chunked_prefill_enabled

    lm = model.language_model
    explicit = {k: kwargs[k] for k in ("position_ids", "rope_deltas") if kwargs.get(k) is not None}
    emb = model.get_input_embeddings(ids, pixels, mask=mask, **kwargs)
    embeds = emb.inputs_embeds
    kwargs.update({k: v for k, v in emb.to_dict().items() if k != "inputs_embeds" and v is not None})
    kwargs.update(explicit)  # a cached prefix's full-prompt positions beat the suffix's own
    if embeds.shape[1] > 1 and _chunked_prefill_enabled(model, input_ids=ids, inputs_embeds=embeds,
                                                        prompt_cache=cache, prefill_kwargs=kwargs):
        while embeds.shape[1] > 1:
            n = min(step, embeds.shape[1] - 1)
            lm(inputs=ids[:, :n], inputs_embeds=embeds[:, :n], cache=cache, n_to_process=n, logits_to_keep=1, **kwargs)
            mx.eval([c.state for c in cache])
            embeds, ids = embeds[:, n:], ids[:, n:]
    out = lm(ids, inputs_embeds=embeds, cache=cache, logits_to_keep=1, **kwargs)
    return out.logits[:, -1, :]


def rope_delta(lm) -> mx.array | None:
    """The row's mRoPE position delta [1, 1] the language model kept from its last prefill, or
    None for a model without one."""
    if not hasattr(lm, "_rope_deltas"):
        return None
    d = lm._rope_deltas
    return mx.zeros((1, 1), mx.int32) if d is None else d.reshape(-1)[:1].reshape(1, 1)


def join(batched: list | None, single: list) -> list:
    """A row's own per-layer caches appended to the batch's (each converted to its batch kind)."""
    single = [type(c).merge([c]) for c in single]
    if batched is None:
        return single
    for b, s in zip(batched, single):
        b.extend(s)
    return batched


class VisionBatch:
    cacheable = False  # no prefix cache: image tokens are not text (PromptCaches keeps whole conversations)

    def __init__(self, loaded: LoadedModel, prefill_step: int = 512, max_batch: int = 32):
        self.loaded = loaded
        self.prefill_step, self.max_batch = prefill_step, max_batch
        self.eos_ids = set(loaded.tokenizer.stop_ids)
        cfg = loaded.model.config
        self.vocab_size = getattr(getattr(cfg, "text_config", None), "vocab_size", None) or cfg.vocab_size
        self.queue: deque[tuple[Row, Sequence]] = deque()
        self.rows: list[Row] = []  # decoding, in the batch cache's row order
        self.seqs: dict[int, Sequence] = {}
        self.inputs: list[int] = []  # each row's next input token
        self.cache: list | None = None  # per layer, a batch cache of every decoding row
        self.deltas: mx.array | None = None  # [rows, 1] mRoPE deltas, None for models without
        self.forwards = 0  # decode forwards run (each serves every decoding row)
        self._next_rid = 0

    @property
    def active(self) -> int:
        return len(self.queue) + len(self.rows)

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
        return {"path": "vision", "queued": len(self.queue), "running": len(self.rows), "forwards": self.forwards}

    def add(self, seq: Sequence, cache=None) -> int:
        self._next_rid += 1
        if seq.sampler is None:
            seq.sampler = make_sampler(seq.sampling)
        stops = set() if seq.sampling.ignore_eos else self.eos_ids
        row = Row(self._next_rid, seq.sampler, processors_for(seq, self.loaded, self.vocab_size), stops,
                  seq.max_tokens - seq.generated, known=len(seq.tokens), logprobs=seq.sampling.logprobs)
        self.queue.append((row, seq))
        self.seqs[row.rid] = seq
        return row.rid

    def remove(self, rid: int) -> None:
        self.seqs.pop(rid, None)
        self.queue = deque((r, s) for r, s in self.queue if r.rid != rid)
        for i, r in enumerate(self.rows):
            if r.rid == rid:
                self._drop([i])
        return None

    def finished(self, rid: int) -> None:
        self.seqs.pop(rid, None)  # it left the batch when its last token was read

    def step(self) -> list[TokenOut]:
        out = self._decode() if self.rows else []
        if self.queue and len(self.rows) < self.max_batch:
            out.append(self._start(*self.queue.popleft()))
        return out

    # ---- one prompt in ----
    def _start(self, row: Row, seq: Sequence) -> TokenOut:
        from mlx_vlm.models.cache import make_prompt_cache

        vi, vision, model = seq.vision, self.loaded.vision, self.loaded.model
        kwargs = dict(vi.extra)
        cache, n = vision.prompts.take(model, vi, kwargs)
        ids, pixels = vi.input_ids, vi.pixel_values
        if cache is None:
            cache = make_prompt_cache(model.language_model)
        else:  # the prefix (images included) is in the cache: feed the text after it
            ids, pixels = ids[:, n:], None
            kwargs.pop("pixel_values_videos", None)
            seq.cached_tokens = n
        if vision.tower is not None:
            vision.tower.key = vi.key
        try:
            logits = prefill(model, ids, pixels, vi.mask, cache, kwargs, self.prefill_step)
        finally:
            if vision.tower is not None:
                vision.tower.key = None
        delta = rope_delta(model.language_model)
        tokens, lp = pick_tokens(logits, ids[0, -1:], [(0, row)])
        token = tokens.item()
        row.n, row.known = 1, row.known + 1
        finish = finish_for(token, row.n, row.max_tokens, row.stop_ids)
        if finish is not None:
            self._keep(row, cache)
        else:
            self.cache = join(self.cache, cache)
            if delta is not None:
                self.deltas = delta if self.deltas is None else mx.concatenate([self.deltas, delta])
            self.rows.append(row)
            self.inputs.append(token)
        return TokenOut(row.rid, [token], finish, None, lp, 0 if lp is not None else None)

    # ---- one decode step for every row ----
    def _decode(self) -> list[TokenOut]:
        lm = self.loaded.model.language_model
        y = mx.array(self.inputs, dtype=mx.uint32)
        kw = {"rope_deltas": self.deltas} if self.deltas is not None else {}
        out = lm(y[:, None], cache=self.cache, **kw)
        self.forwards += 1
        logits = (out.logits if hasattr(out, "logits") else out)[:, -1, :]
        tokens, lp = pick_tokens(logits, y, list(enumerate(self.rows)))
        values = tokens.tolist()
        result, done = [], []
        for i, (r, token) in enumerate(zip(self.rows, values)):
            r.n += 1
            r.known += 1
            finish = finish_for(token, r.n, r.max_tokens, r.stop_ids)
            if finish is not None:
                self._keep(r, [c.extract(i) for c in self.cache])
                done.append(i)
            self.inputs[i] = token
            result.append(TokenOut(r.rid, [token], finish, None, lp, i if lp is not None else None))
        if done:
            self._drop(done)
        return result

    def _drop(self, idx: list[int]) -> None:
        keep = [i for i in range(len(self.rows)) if i not in idx]
        self.rows = [self.rows[i] for i in keep]
        self.inputs = [self.inputs[i] for i in keep]
        if not keep:
            self.cache = self.deltas = None
            return
        at = mx.array(keep, mx.int32)
        for c in self.cache:
            c.filter(at)
        if self.deltas is not None:
            self.deltas = self.deltas[at]

    def _keep(self, row: Row, cache: list) -> None:
        """A finished row's KV goes to the model's conversation cache, for a request that resends
        this conversation with the reply appended."""
        seq = self.seqs.get(row.rid)
        if seq is None:
            return
        tokens = seq.vision.input_ids[0].tolist() + seq.out_tokens  # what was fed: all but this step's token
        n = held(cache)
        if 0 < n <= len(tokens):
            self.loaded.vision.prompts.put(tokens[:n], seq.vision.key, cache)
