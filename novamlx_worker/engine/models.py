"""Every model the worker serves, one place: generators (weights in the pool, a decode path
and a prefix cache per loaded model) and embedders (loaded on first use).

Loads, registrations, unloads, evictions and ttl expiry happen here; the engine says which
models are busy (a busy model is never unloaded) and hears about changes through `on_change`.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from protocol import messages as m

from ..models.loader import LoadedModel
from ..models.pool import ModelPool, kv_bytes_per_token
from ..models.shape import activation_dtype, attention_shape
from .errors import RequestError
from .draft import check_pair
from .kv import KVFormat, plain_kv, support
from .prefix_cache import PrefixCache
from .runner import Runner
from .ssd_cache import SSDTier
from .vision_batch import VisionBatch

log = logging.getLogger("novamlx.engine")


class Models:
    def __init__(self, pool: ModelPool, embedders: list, on_change: Callable[[], None], max_batch: int,
                 prefill_step: int, prefill_batch: int, block_size: int, prefix_cache_bytes: int,
                 ssd: SSDTier | None, kv: tuple[int, int] = (0, 64), ngram_k: int = 0, draft: str = "",
                 draft_k: int = 4, ngram_match: tuple[int, int] = (2, 4)):
        self.pool = pool
        self.ngram_k = ngram_k
        self.ngram_match = ngram_match
        self.default_draft, self.default_draft_k = draft, draft_k  # --draft-model for models without their own
        self.default_kv = kv  # (kv_bits, kv_group_size) for models without their own setting
        self.on_change = on_change  # the list of servable models changed: tell the gateway
        self.runners: dict[str, Runner | VisionBatch] = {}
        self.caches: dict[str, PrefixCache] = {}
        self.embedders = {e.id: e for e in embedders}
        self.embedder_paths: dict[str, m.Found] = {}  # registered from disk, loaded on first use
        self.max_batch, self.prefill_step, self.prefill_batch = max_batch, prefill_step, prefill_batch
        self.block_size, self.prefix_cache_bytes, self.ssd = block_size, prefix_cache_bytes, ssd
        self.next_expiry_check = 0.0

    def loaded(self) -> list[str]:
        return [lm.id for lm in self.pool.loaded()]

    def infos(self) -> list[m.ModelInfo]:
        llms = [m.ModelInfo(e.id, e.kind, e.context_length, e.created, e.path, e.aliases, e.loaded is not None)
                for e in self.pool.entries.values()]
        embedders = [m.ModelInfo(e.id, e.kind, e.max_len, e.created, e.path, e.aliases) for e in self.embedders.values()]
        on_disk = [m.ModelInfo(i, f.kind, 0, 0, f.path, [], False) for i, f in self.embedder_paths.items()]
        return llms + embedders + on_disk

    # ---- generators ----
    def get(self, name: str, refuse_load: Callable[[], RequestError | None] = lambda: None) -> LoadedModel:
        """The loaded model (loading it first) with its decode path and prefix cache ready.
        refuse_load: why a model not in memory may not be loaded now (None: it may)."""
        entry = self.pool.find(name)
        if entry is None:
            raise RequestError(f"The model `{name}` does not exist.", "model_not_found", "model")
        was_loaded = entry.loaded is not None
        if not was_loaded and (refused := refuse_load()) is not None:
            raise refused
        try:
            lm = self.pool.get(entry.id)
        except Exception as e:  # noqa: BLE001 - a failed (re)load is this request's error, not the worker's death
            log.exception("loading %s failed", entry.id)
            raise RequestError(f"Loading model `{entry.id}` failed: {e}", "model_load_failed") from None
        if not was_loaded:
            self.on_change()
        if entry.id not in self.runners:
            self.runners[entry.id] = self._runner(lm)
        return lm

    def _runner(self, lm: LoadedModel):
        if lm.vision is not None:
            return VisionBatch(lm, self.prefill_step, self.max_batch)
        kv = self.kv_format(lm.id)
        if kv.quantized:
            heads, kv_heads, head_dim = attention_shape(lm.model)
            how = None if head_dim % kv.group_size else support(kv, heads, kv_heads, head_dim, activation_dtype(lm.model))
            if how is None:
                why = (f"head dim {head_dim} is not a multiple of kv_group_size {kv.group_size}" if head_dim % kv.group_size
                       else "this device's MLX has no quantized attention kernel for it")
                log.warning("%s: KV cache stays unquantized (kv_bits %d asked): %s", lm.id, kv.bits, why)
                kv = KVFormat()
            elif how == "contiguous":
                kv = KVFormat(kv.bits, kv.group_size, contiguous=True)
        draft, k, why = self._draft_for(lm)
        runner = Runner(lm, max_batch=self.max_batch, prefill_step=self.prefill_step, prefill_batch=self.prefill_batch,
                        kv=kv, snapshot_bytes=self.prefix_cache_bytes, ngram_k=self.ngram_k, ngram_match=self.ngram_match, draft=draft, draft_k=k,
                        draft_error=why, draft_prefix=self._draft_prefix(draft))
        if runner.cacheable:
            self._prefix_cache(lm.id, kv)
        return runner

    def _prefix_cache(self, model_id: str, kv: KVFormat = KVFormat()) -> PrefixCache | None:
        """A plain-KV model's prefix cache, made at first use (None with prefix caching off)."""
        if self.prefix_cache_bytes <= 0:
            return None
        if model_id not in self.caches:
            self.caches[model_id] = PrefixCache(model_id, self.block_size, self.prefix_cache_bytes, self.ssd, kv)
        return self.caches[model_id]

    def _draft_prefix(self, draft: LoadedModel | None) -> PrefixCache | None:
        """The draft model's own prefix cache (the one it has when it serves too), where its KV is plain."""
        return self._prefix_cache(draft.id) if draft is not None and plain_kv(draft.model) else None

    def kv_format(self, model_id: str) -> KVFormat:
        e = self.pool.entries[model_id]
        return KVFormat(*self.default_kv) if e.kv_bits is None else KVFormat(e.kv_bits, e.kv_group_size)

    def _draft_for(self, lm: LoadedModel) -> tuple[LoadedModel | None, int, str]:
        """The draft model set for this one (its draft_model setting, else --draft-model), loaded,
        if it shares the tokenizer, its draft length, and why not where a draft is set but cannot
        serve (logged, and shown in /v1/stats: the target still serves, without it)."""
        entry = self.pool.entries[lm.id]
        name = entry.draft_model or self.default_draft
        if not name or lm.vision is not None:
            return None, 0, ""
        found = self.pool.find(name)
        why = ""
        if found is None or found.id == lm.id:
            why = f"draft model `{name}` is not served here" if found is None else "a model cannot draft for itself"
        else:
            try:
                draft = self.pool.get(found.id)
                check_pair(lm, draft)
            except Exception as e:  # noqa: BLE001 - the target still serves, without the draft
                why = f"draft model `{name}` left out: {e}"
        if why:
            log.warning("%s: %s; decoding without it", lm.id, why)
            return None, 0, why
        return draft, entry.num_draft_tokens or self.default_draft_k, ""

    def kv_report(self) -> dict:
        """Per loaded model: its KV format now and what a token costs plain, for the admin's
        turboquant view and recommendation."""
        out = {}
        for lm in self.pool.loaded():
            kv = self.kv_format(lm.id)
            out[lm.id] = {"kv_bits": kv.bits, "kv_group_size": kv.group_size, "context_length": self.window(lm),
                          "plain_bytes_per_token": kv_bytes_per_token(lm),
                          "bytes_per_token": kv_bytes_per_token(lm, kv.bits, kv.group_size),
                          "head_dim": attention_shape(lm.model)[2] if lm.vision is None else None}
        return out

    def reset_runner(self, model_id: str) -> None:
        """A fresh decode path for a model whose batch failed (its prefix cache stays)."""
        self.runners.pop(model_id, None)
        self.get(model_id)

    def window(self, lm: LoadedModel) -> int:
        entry = self.pool.entries.get(lm.id)
        return min(lm.context_length, entry.max_context) if entry and entry.max_context else lm.context_length

    def idle_entry(self, name: str, busy: set[str]):
        entry = self.pool.find(name)
        if entry is None:
            raise RequestError(f"No model `{name}`.", "model_not_found", "model")
        if entry.id in busy:
            raise RequestError(f"Model `{entry.id}` is serving requests; retry when they finish.", "model_busy",
                               "model")
        return entry

    def drop(self, model_id: str) -> None:
        """Unload a model's weights, decode path and prefix cache (its blocks go to the SSD tier)."""
        self.runners.pop(model_id, None)
        cache = self.caches.pop(model_id, None)
        if cache is not None:
            cache.clear()
        self.pool.evict(model_id)
        self.on_change()

    def evict_one(self, busy: set[str]) -> bool:
        victim = self.pool.lru_evictable(busy)
        if victim is None:
            return False
        self.drop(victim)
        return True

    def expire(self, busy: Callable[[], set[str]]) -> None:
        """Unload models idle past their ttl_seconds (checked once a second: the busy set is
        built only then, not on every engine turn)."""
        now = time.monotonic()
        if now < self.next_expiry_check:
            return
        self.next_expiry_check = now + 1.0
        for model_id in self.pool.expired(busy(), now):
            log.info("unloading %s: idle past its ttl", model_id)
            self.drop(model_id)

    # ---- admin commands: each returns its Result's data ----
    def register_all(self, found: list[m.Found]) -> dict:
        ids = [self.register(f) for f in found]
        self.on_change()
        return {"registered": [i for i in ids if i]}

    def register(self, found: m.Found) -> str | None:
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

    def load(self, spec: str, pin: bool, refuse_load=lambda: None) -> dict:
        try:
            entry = self.pool.add(spec, pin)
        except FileNotFoundError as e:
            raise RequestError(str(e), "model_not_found", "model") from None
        self.get(entry.id, refuse_load)
        self.on_change()
        return {"id": entry.id, "loaded": True}

    def unload(self, name: str, busy: set[str]) -> dict:
        entry = self.idle_entry(name, busy)
        if entry.loaded is not None:
            self.drop(entry.id)
        return {"id": entry.id, "loaded": False}

    def forget(self, name: str, busy: set[str]) -> dict:
        if name in self.embedders or name in self.embedder_paths:
            self.embedders.pop(name, None)
            self.embedder_paths.pop(name, None)
        else:
            entry = self.idle_entry(name, busy)
            if entry.loaded is not None:
                self.drop(entry.id)
            self.pool.forget(entry.id)
        self.on_change()
        return {"id": name, "forgotten": True}

    def apply(self, policies: dict[str, m.Policy], busy: set[str]) -> dict:
        for e in self.pool.entries.values():
            p = policies.get(e.id) or m.Policy()
            e.ttl, e.policy_pinned, e.max_context = float(p.ttl_seconds), p.pinned, p.max_context_window
            before = (self.kv_format(e.id), e.draft_model, e.num_draft_tokens)
            e.kv_bits, e.kv_group_size = p.kv_bits, p.kv_group_size
            e.draft_model, e.num_draft_tokens = p.draft_model, p.num_draft_tokens
            if (self.kv_format(e.id), e.draft_model, e.num_draft_tokens) != before:
                if e.id not in busy:  # a new KV format or draft: a fresh decode path (and cache) at next use
                    self.runners.pop(e.id, None)
                    if (cache := self.caches.pop(e.id, None)) is not None:
                        cache.clear()
        return {"applied": sorted(policies)}

    # ---- embedders ----
    def embedder(self, name: str):
        emb = self.embedders.get(name)
        if emb is None and name in self.embedder_paths:
            from ..models.embedder import load_embedder

            try:
                emb = self.embedders[name] = load_embedder(self.embedder_paths.pop(name).path, name)
            except Exception as e:  # noqa: BLE001 - a broken folder fails this request, not the worker
                log.exception("loading %s failed", name)
                raise RequestError(f"Loading model `{name}` failed: {e}", "model_load_failed") from None
        if emb is None:
            raise RequestError(f"The model `{name}` is not an embedding or reranking model.", "invalid_model", "model")
        return emb
