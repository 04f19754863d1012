"""Inference counters for this session and for all time, the latter persisted to
<data_dir>/usage_stats.json (written atomically every few seconds and at shutdown, so a crash
loses at most that much; a worker crash loses nothing: the gateway counts).

Counted per generation that ends (a request with n choices counts n): requests, prompt,
completion and cached tokens, generation seconds (for the average tok/s), errors by kind;
per model the same plus the prefix-cache hit rate (requests that reused cached tokens)."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("novamlx.usage")

FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "generation_s", "cache_hits")


def _empty() -> dict:
    return {"since": time.time(), "errors": {}, "models": {}, **{k: 0 for k in FIELDS}}


def _view(c: dict) -> dict:
    """A counter set as /v1/stats shows it: averages derived, per model too."""
    def derived(x: dict) -> dict:
        out = {k: round(x[k], 3) if isinstance(x[k], float) else x[k] for k in FIELDS}
        out["avg_tokens_per_s"] = round(x["completion_tokens"] / x["generation_s"], 2) if x["generation_s"] else 0.0
        out["cache_hit_rate"] = round(x["cache_hits"] / x["requests"], 4) if x["requests"] else 0.0
        return out
    return {**derived(c), "since": c["since"], "errors": dict(c["errors"]),
            "models": {name: derived(v) for name, v in c["models"].items()}}


class UsageStats:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.session = _empty()
        self.all_time = self._load()
        self.dirty = False

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            base = _empty()
            base.update({k: data[k] for k in FIELDS + ("since",) if isinstance(data.get(k), (int, float))})
            base["errors"] = {k: int(v) for k, v in (data.get("errors") or {}).items()}
            base["models"] = {name: {k: v.get(k, 0) for k in FIELDS} for name, v in (data.get("models") or {}).items()
                              if isinstance(v, dict)}
            return base
        except FileNotFoundError:
            return _empty()
        except (ValueError, TypeError, AttributeError) as e:  # a corrupt file starts over, never stops the server
            log.warning("usage stats %s unreadable (%s): starting from zero", self.path, e)
            return _empty()

    def finished(self, model: str, prompt: int, completion: int, cached: int, seconds: float) -> None:
        add = {"requests": 1, "prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": cached,
               "generation_s": max(seconds, 0.0), "cache_hits": int(cached > 0)}
        with self.lock:
            for c in (self.session, self.all_time):
                per = c["models"].setdefault(model, {k: 0 for k in FIELDS})
                for k, v in add.items():
                    c[k] += v
                    per[k] += v
            self.dirty = True

    def error(self, kind: str) -> None:
        with self.lock:
            for c in (self.session, self.all_time):
                c["errors"][kind] = c["errors"].get(kind, 0) + 1
            self.dirty = True

    def snapshot(self) -> dict:
        with self.lock:
            return {"session": _view(self.session), "all_time": _view(self.all_time)}

    def clear(self, scope: str) -> None:
        """scope: "session", "all_time" or "all"."""
        with self.lock:
            if scope in ("session", "all"):
                self.session = _empty()
            if scope in ("all_time", "all"):
                self.all_time = _empty()
            self.dirty = True
        self.save()

    def save(self) -> None:
        with self.lock:
            if not self.dirty:
                return
            data, self.dirty = json.dumps(self.all_time), False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(data)
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot write usage stats: %s", e)
