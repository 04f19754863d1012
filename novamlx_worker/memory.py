"""ProcessMemoryEnforcer: a process memory limit, polled every second by the engine.

Modes: "auto" reserves max(4 GB, min(8 GB, physical/5)) for the system; "80%" is a share
of physical memory; "24GB" / "4096MB" are fixed. Above the soft limit (90%) it warns;
above the hard limit it evicts unpinned idle models (LRU), then refuses new admissions
until usage is back under the limit.
"""
from __future__ import annotations

import logging
import re
import time

import mlx.core as mx
import psutil

log = logging.getLogger("novamlx.memory")

GB = 1024**3
_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": GB, "TB": 1024**4}


def parse_limit(spec: str, physical: int | None = None) -> int:
    physical = physical or psutil.virtual_memory().total
    s = str(spec).strip().upper().replace(" ", "")
    if s in ("", "AUTO"):
        return physical - max(4 * GB, min(8 * GB, physical // 5))
    if s.endswith("%"):
        pct = float(s[:-1])
        if not 0 < pct <= 100:
            raise ValueError(f"memory percent must be in (0, 100], got {spec!r}")
        return int(physical * pct / 100)
    found = re.fullmatch(r"([0-9.]+)([KMGT]?B?)", s)
    if not found:
        raise ValueError(f"cannot read memory limit {spec!r}: use auto, a percent (80%) or a size (24GB, 4096MB)")
    unit = found.group(2)
    unit = unit if unit in _UNITS else unit + "B"
    return int(float(found.group(1)) * _UNITS[unit])


def process_usage() -> int:
    """Bytes this process holds: RSS, plus GPU buffers where they live outside RSS (Metal, CUDA)."""
    rss = psutil.Process().memory_info().rss
    gpu = mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available())
    return rss + (mx.get_active_memory() + mx.get_cache_memory() if gpu else 0)


class MemoryEnforcer:
    SOFT = 0.9

    def __init__(self, spec: str = "auto", usage=process_usage, interval: float = 1.0):
        self.usage = usage
        self.interval = interval
        self.refusing = False
        self.last_used = 0
        self._next = 0.0
        self._warned = False
        self.set_limit(spec)

    def set_limit(self, spec: str) -> None:
        self.spec = spec
        self.limit = parse_limit(spec)
        cuda = hasattr(mx, "cuda") and mx.cuda.is_available()
        if self.limit >= GB and not cuda:  # MLX's allocator targets; a CUDA card has its own memory
            mx.set_memory_limit(self.limit)
            mx.set_cache_limit(self.limit // 4)
        self._next = 0.0
        log.info("process memory limit %s = %.2f GB", spec, self.limit / GB)

    def poll(self, evict_one, force: bool = False) -> None:
        """Called from the engine thread; evict_one() frees one model and says whether it did."""
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.interval
        used = self.last_used = self.usage()
        if used > self.limit:
            while used > self.limit and evict_one():
                mx.clear_cache()
                used = self.last_used = self.usage()
            if used > self.limit and not self.refusing:
                log.error("memory %.2f GB over the hard limit %.2f GB with nothing left to evict: refusing new requests",
                          used / GB, self.limit / GB)
            self.refusing = used > self.limit
        else:
            if self.refusing:
                log.info("memory back under the limit (%.2f GB); accepting requests", used / GB)
            self.refusing = False
            if used > self.SOFT * self.limit and not self._warned:
                log.warning("memory %.2f GB above the soft limit (%.0f%% of %.2f GB)", used / GB, self.SOFT * 100,
                            self.limit / GB)
            self._warned = used > self.SOFT * self.limit

    def state(self) -> dict:
        return {"mode": self.spec, "limit_bytes": self.limit, "soft_limit_bytes": int(self.SOFT * self.limit),
                "used_bytes": self.last_used, "refusing": self.refusing}
