"""The models this worker serves: loaded on demand, evicted LRU when memory runs short."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .loader import LoadedModel, load, resolve
from protocol.naming import classify

log = logging.getLogger("novamlx.pool")


@dataclass
class Entry:
    id: str
    spec: str | None
    aliases: list[str]
    pinned: bool = False  # --pin on the command line
    loaded: LoadedModel | None = None
    policy_pinned: bool = False  # the model's is_pinned setting
    ttl: float = 0.0  # unload after this many idle seconds; 0: never
    max_context: int = 0  # the model's max_context_window setting; 0: its own window
    last_used: float = 0.0
    context_length: int = 0
    created: int = 0
    kind: str = "llm"  # or vlm
    path: str = ""  # the resolved folder or .gguf file: one entry per set of weights
    kv_bits: int | None = None  # KV cache quantization (engine/kv.py): 0 off, 2-8 bits; None: the worker's default
    kv_group_size: int = 64
    draft_model: str | None = None  # speculative decoding's draft (engine/draft.py); None: the worker's default
    num_draft_tokens: int = 0  # 0: the worker's default


def weight_bytes(lm: LoadedModel) -> int:
    return sum(v.nbytes for _, v in tree_flatten(lm.model.parameters()))


def kv_bytes_per_token(lm: LoadedModel, bits: int = 0, group_size: int = 64) -> int:
    """K and V for every layer: what one cached token costs (quantized: packed bits plus a
    scale and a bias per group, as mlx-lm's QuantizedKVCache stores them)."""
    if lm.vision is not None:  # mlx-vlm: the language model's text config
        cfg = lm.model.config
        t = getattr(cfg, "text_config", None) or cfg
        heads = getattr(t, "num_key_value_heads", None) or t.num_attention_heads
        head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
        dtype_bytes = next(v for _, v in tree_flatten(lm.model.language_model.parameters())).dtype.size
        elements = 2 * t.num_hidden_layers * heads * head_dim
    else:
        args = lm.model.args
        heads = getattr(args, "num_key_value_heads", None) or args.num_attention_heads
        head_dim = getattr(args, "head_dim", None) or args.hidden_size // args.num_attention_heads
        embed = lm.model.model.embed_tokens
        # Quantized layers compute in their scales' dtype; dense ones in their weights'.
        dtype_bytes = (embed.scales if hasattr(embed, "scales") else embed.weight).dtype.size
        elements = 2 * len(lm.model.layers) * heads * head_dim
    if bits:
        return int(elements * bits / 8 + 2 * dtype_bytes * elements / group_size)
    return elements * dtype_bytes


class ModelPool:
    def __init__(self, specs: list[str | None], pinned: list[str], dequantize: str, group=None,
                 vision_cache_dir: str | None = None, gguf_bits: int | None = None):
        from .vision import FeatureCache

        self.dequantize = dequantize
        self.gguf_bits = gguf_bits  # GGUF block-quantized tensors re-quantized to this width (None: by type)
        self.group = group  # models are sharded over this mlx.distributed group when it has several ranks
        self.features = FeatureCache(folder=vision_cache_dir)  # vision-tower outputs, shared by the VLMs
        self.entries: dict[str, Entry] = {}
        for spec in specs:
            self.add(spec, pin=False, pinned=pinned)

    def add(self, spec: str | None, pin: bool = False, pinned: list[str] = ()) -> Entry:
        """The entry for a spec, made on first sight; a spec naming weights already here (by id,
        alias or path) is that entry, so the same weights are never loaded twice."""
        entry = self.find(spec) if spec else None
        if entry is None:
            model_id, path, aliases = resolve(spec)
            real = os.path.realpath(path)  # a symlinked or relative path to the same weights is the same entry
            entry = self.entries.get(model_id) or next((e for e in self.entries.values()
                                                        if os.path.realpath(e.path) == real), None)
            if entry is None:
                kind = "vlm" if Path(path).is_dir() and classify(Path(path)) == "vlm" else "llm"
                entry = self.entries[model_id] = Entry(model_id, spec, aliases, kind=kind, path=path)
        entry.pinned = entry.pinned or pin or entry.id in pinned or (spec in pinned if spec else False)
        return entry

    def find(self, name: str | None) -> Entry | None:
        if name is None:
            return None
        if name in self.entries:
            return self.entries[name]
        low = name.lower()
        for e in self.entries.values():
            if low == e.id.lower() or low in (a.lower() for a in e.aliases):
                return e
        return None

    def get(self, model_id: str) -> LoadedModel:
        """The loaded model, loading it now if it was evicted (blocking, on the engine thread)."""
        e = self.entries[model_id]
        if e.loaded is None:
            t = time.monotonic()
            e.loaded = load(e.spec, self.dequantize, self.features, self.group, self.gguf_bits)
            e.context_length, e.created = e.loaded.context_length, e.loaded.created
            log.info("loaded %s in %.1fs", model_id, time.monotonic() - t)
        e.last_used = time.monotonic()
        return e.loaded

    def evict(self, model_id: str) -> None:
        e = self.entries[model_id]
        e.loaded = None
        mx.clear_cache()
        log.warning("evicted model %s", model_id)

    def forget(self, model_id: str) -> None:
        if self.entries[model_id].loaded is not None:
            self.evict(model_id)
        del self.entries[model_id]

    def _idle(self, busy: set[str]) -> list[Entry]:
        return [e for e in self.entries.values()
                if e.loaded is not None and not (e.pinned or e.policy_pinned) and e.id not in busy]

    def unpinned_loaded(self) -> int:
        return sum(1 for e in self.entries.values() if e.loaded is not None and not (e.pinned or e.policy_pinned))

    def lru_evictable(self, busy: set[str]) -> str | None:
        idle = self._idle(busy)
        return min(idle, key=lambda e: e.last_used).id if idle else None

    def expired(self, busy: set[str], now: float) -> list[str]:
        """Idle models whose time-to-live ran out."""
        return [e.id for e in self._idle(busy) if e.ttl > 0 and now - e.last_used >= e.ttl]

    def loaded(self) -> list[LoadedModel]:
        return [e.loaded for e in self.entries.values() if e.loaded is not None]
