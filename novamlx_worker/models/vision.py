"""Vision-language models through mlx-vlm: loading, prompts with images, a feature cache.

mlx-vlm owns the architectures and the image processors; we own the prompt (the model's
own chat template over `{"type": "image"}` parts), the images (files the gateway fetched
and checked, named by their SHA-256) and the cache of vision-tower outputs.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

log = logging.getLogger("novamlx.vision")


class FeatureCache:
    """Vision-tower outputs keyed by (model, SHA-256 of each image's bytes), LRU in memory and,
    with a folder, on disk as safetensors (so they survive worker restarts). Only outputs that
    are one array or a flat tuple of arrays are written; a corrupt file is deleted, never fatal."""

    def __init__(self, capacity: int = 20, folder: str | None = None, disk_bytes: int = 2 * 1024**3):
        self.capacity = capacity
        self.items: OrderedDict[tuple, object] = OrderedDict()
        self.hits = self.misses = self.disk_hits = 0
        self.folder = Path(folder) if folder else None
        self.disk_bytes = disk_bytes

    def _file(self, key: tuple) -> Path:
        return self.folder / (hashlib.sha256(repr(key).encode()).hexdigest() + ".safetensors")

    def get(self, key: tuple):
        if key in self.items:
            self.items.move_to_end(key)
            self.hits += 1
            return self.items[key]
        value = self._read(key) if self.folder is not None else None
        if value is not None:
            self.disk_hits += 1
            self.hits += 1
            self._remember(key, value)
            return value
        self.misses += 1
        return None

    def put(self, key: tuple, value) -> None:
        self._remember(key, value)
        if self.folder is not None:
            threading.Thread(target=self._write, args=(key, value), daemon=True).start()  # off the engine's path

    def _remember(self, key: tuple, value) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)

    def _write(self, key: tuple, value) -> None:
        parts = [value] if isinstance(value, mx.array) else list(value) if isinstance(value, (tuple, list)) else None
        if parts is None or not all(v is None or isinstance(v, mx.array) for v in parts):
            return  # nested outputs (per-layer hidden states): memory only
        arrays = {str(i): v for i, v in enumerate(parts) if v is not None}
        meta = {"n": str(len(parts)), "single": "1" if isinstance(value, mx.array) else "0"}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            final = self._file(key)
            tmp = final.with_name(f"{final.stem}.{threading.get_ident()}.tmp.safetensors")  # MLX keeps this suffix
            mx.save_safetensors(str(tmp), arrays, metadata=meta)
            os.replace(tmp, final)
            self._trim()
        except (OSError, ValueError, RuntimeError) as e:
            log.warning("cannot write vision features: %s", e)

    def _read(self, key: tuple):
        path = self._file(key)
        if not path.exists():
            return None
        try:
            arrays, meta = mx.load(str(path), return_metadata=True)
            if meta.get("single") == "1":
                return arrays["0"]
            return tuple(arrays.get(str(i)) for i in range(int(meta["n"])))
        except Exception as e:  # noqa: BLE001 - truncated or foreign file: drop it, recompute
            log.warning("dropping unreadable vision features %s: %s", path.name, e)
            path.unlink(missing_ok=True)
            return None

    def _trim(self) -> None:
        files = sorted((f for f in self.folder.glob("*.safetensors") if ".tmp." not in f.name),
                       key=lambda f: f.stat().st_mtime)
        total = sum(f.stat().st_size for f in files)
        while files and total > self.disk_bytes:
            f = files.pop(0)
            total -= f.stat().st_size
            f.unlink(missing_ok=True)

    def stats(self) -> dict:
        return {"entries": len(self.items), "capacity": self.capacity, "hits": self.hits, "misses": self.misses,
                "disk_hits": self.disk_hits}


class CachingTower:
    """Makes `model.vision_tower` consult the feature cache: a call for images already seen
    returns the cached output instead of running the tower. The tower instance gets a
    subclass of its own class whose __call__ checks the cache, so its parameters, attributes
    and place in the model stay as they were. The runner sets `key` before each prefill."""

    def __init__(self, tower, cache: FeatureCache, model_id: str):
        self.key: tuple | None = None
        state = self
        base = type(tower)

        def __call__(module, *args, **kwargs):
            key = (model_id, state.key, repr(sorted(kwargs.items(), key=lambda kv: kv[0]))[:200])
            if state.key:
                hit = cache.get(key)
                if hit is not None:
                    return hit
            out = base.__call__(module, *args, **kwargs)
            if state.key:
                mx.eval(out)
                cache.put(key, out)
            return out

        tower.__class__ = type(f"Cached{base.__name__}", (base,), {"__call__": __call__})


@dataclass
class Vision:
    processor: object
    tower: CachingTower | None
    prompts: "PromptCaches" = field(default_factory=lambda: PromptCaches())


def load_vlm(path: str, model_id: str, cache: FeatureCache):
    """(model, Vision, HF tokenizer, context length) for an mlx-vlm folder."""
    from mlx_vlm.utils import load as vlm_load

    model, processor = vlm_load(path)
    tower = CachingTower(model.vision_tower, cache, model_id) if getattr(model, "vision_tower", None) is not None else None
    tok = processor.tokenizer if hasattr(processor, "tokenizer") else processor
    cfg = model.config
    text = getattr(cfg, "text_config", None)
    ctx = getattr(text, "max_position_embeddings", None) or getattr(cfg, "max_position_embeddings", None) or 4096
    return model, Vision(processor, tower), tok, int(ctx)


def hf_messages(messages, tools=None) -> list[dict]:
    """Protocol messages as the HF processors' templates expect them: content parts with
    `{"type": "image"}` where each image goes, plain strings otherwise."""
    out = []
    for msg in messages:
        if msg.parts:
            content = [{"type": "image"} if p.type == "image" else {"type": "text", "text": p.text or ""}
                       for p in msg.parts]
        else:
            content = msg.content or ""
        out.append({"role": msg.role, "content": content})
    return out


def images_of(messages) -> list:
    return [p.image for msg in messages if msg.parts for p in msg.parts if p.type == "image"]


def render_prompt(vision: Vision, messages, template_kwargs: dict | None = None) -> str:
    proc = vision.processor
    msgs = hf_messages(messages)
    kw = dict(template_kwargs or {})
    if getattr(proc, "chat_template", None):
        return proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **kw)
    tok = proc.tokenizer if hasattr(proc, "tokenizer") else proc
    return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **kw)


@dataclass
class VisionInputs:
    input_ids: mx.array  # [1, n]
    pixel_values: object
    mask: object
    extra: dict  # image_grid_thw and the like
    key: tuple | None  # image hashes, for the feature cache


def prepare(model, vision: Vision, prompt: str, images: list) -> VisionInputs:
    """Tokenize the prompt and process the images the way mlx-vlm's generate does."""
    from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

    paths = [ref.path for ref in images]  # mlx-vlm opens them (EXIF rotation, RGB) as its generate does
    inputs = prepare_inputs(vision.processor, images=paths or None, prompts=prompt,
                            image_token_index=getattr(model.config, "image_token_index", None),
                            add_special_tokens=should_add_special_tokens(model.config.model_type, vision.processor))
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
    key = tuple(ref.sha256 for ref in images) or None
    return VisionInputs(inputs["input_ids"], inputs.get("pixel_values"), inputs.get("attention_mask"), extra, key)


class PromptCaches:
    """KV caches of finished VLM sequences, keyed by their tokens and image hashes.

    A new request with the same images whose prompt starts with a cached sequence's tokens
    (a conversation re-sent with the assistant's reply appended) takes that cache, keeps the
    shared prefix and prefills only the text after it. mlx-vlm's own helpers decide whether a
    cache can be cut back (sliding windows and the like cannot) and restore Qwen-VL's mRoPE
    state for the full prompt. An entry is taken, not shared: the new sequence extends it."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self.entries: OrderedDict[int, tuple[list[int], tuple | None, list]] = OrderedDict()
        self.hits = self.misses = 0
        self.tokens_saved = 0
        self._next = 0

    def put(self, tokens: list[int], image_key: tuple | None, cache: list) -> None:
        if not tokens:
            return
        self._next += 1
        self.entries[self._next] = (tokens, image_key, cache)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def take(self, model, inputs: VisionInputs, kwargs: dict):
        """(cache, prefix length) for a hit, the kwargs primed for it; (None, 0) for a miss."""
        from mlx_vlm import apc
        from mlx_vlm.generate.dispatch import _prefix_cache_trim_amount, _prime_cached_prefix_rope_state

        ids = inputs.input_ids[0].tolist()
        best, best_n = None, 0
        for key, (tokens, image_key, _) in self.entries.items():
            if image_key != inputs.key:
                continue
            n = 0
            for a, b in zip(tokens, ids):
                if a != b:
                    break
                n += 1
            n = min(n, len(ids) - 1)  # at least one token left to prefill
            if n > best_n:
                best, best_n = key, n
        if best is None or not apc.prefix_leaves_text_only_suffix(ids, best_n,
                                                                   apc.multimodal_token_ids_from_config(model.config)):
            self.misses += 1
            return None, 0
        _, _, cache = self.entries[best]
        drop = _prefix_cache_trim_amount(cache, best_n)
        if drop is None or not _prime_cached_prefix_rope_state(model, inputs.input_ids, inputs.mask, kwargs):
            self.misses += 1
            return None, 0
        del self.entries[best]
        for c in cache:
            if drop:
                c.trim(drop)
        self.hits += 1
        self.tokens_saved += best_n
        return cache, best_n

    def stats(self) -> dict:
        return {"entries": len(self.entries), "hits": self.hits, "misses": self.misses,
                "tokens_saved": self.tokens_saved}
