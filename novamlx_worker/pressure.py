"""Memory pressure from the whole machine, not only this process.

The enforcer (memory.py) acts when this process passes its own limit; a user whose browser
and IDE fill the machine would still swap. Here the machine's available memory sets a level:
normal, warning (under 15% available), critical (under 5%). Under either, idle sessions leave
memory first (saved to disk when saving is on; the next turn restores them); on warning the
engine then evicts idle unpinned models down to one and sends prefix-cache blocks to the SSD
tier; on critical it evicts every idle unpinned model. Every minute MLX's active memory is also checked against
80% of the process limit. And after two idle seconds MLX's buffer cache goes back to the system
(a burst of streams leaves gigabytes in it that an idle worker does not need).
NOVAMLX_PRESSURE=warning|critical fakes the level (tests only).
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque

import mlx.core as mx
import psutil

log = logging.getLogger("novamlx.memory")

WARNING_AVAILABLE = 0.15
CRITICAL_AVAILABLE = 0.05


def machine_level() -> str:
    forced = os.environ.get("NOVAMLX_PRESSURE", "")
    if forced in ("normal", "warning", "critical"):
        return forced
    vm = psutil.virtual_memory()
    available = vm.available / vm.total
    return "critical" if available < CRITICAL_AVAILABLE else "warning" if available < WARNING_AVAILABLE else "normal"


class Pressure:
    def __init__(self, interval: float = 1.0, level=machine_level):
        self.interval, self.read = interval, level
        self.level = "normal"
        self._next = 0.0
        self.actions: deque = deque(maxlen=20)  # what was done about it, newest last (for /health)
        self.next_active_check = time.monotonic() + 60.0
        self.idle_since: float | None = None  # nothing to do since then (-1: cache already given back)

    def poll(self) -> str | None:
        """The level when it is time to look (None between looks)."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.interval
        level = self.read()
        if level != self.level:
            (log.warning if level != "normal" else log.info)("machine memory pressure: %s -> %s", self.level, level)
            self.level = level
        return level

    def relieve(self, level: str | None, models, busy, limit: int, sessions=None) -> None:
        """Idle sessions go first (saved when saving is on); then warning: one idle unpinned model
        stays loaded and prefix blocks leave memory (to the SSD tier); critical: every idle
        unpinned model goes. `models`: the engine's Models; `busy()`: the models serving now
        (asked only when there is something to do); `sessions`: its Sessions."""
        pool = models.pool
        if level in ("warning", "critical"):
            while sessions is not None and sessions.drop_one():
                self.acted("session dropped from memory")
            keep = 1 if level == "warning" else 0
            while pool.unpinned_loaded() > keep and (victim := pool.lru_evictable(busy())) is not None:
                models.drop(victim)
                self.acted(f"evicted {victim}")
            if level == "warning":
                freed = sum(pc.spill() for pc in list(models.caches.values()))
                if freed:
                    self.acted(f"prefix blocks out of memory ({freed / 1024**2:.0f} MB)")
        now = time.monotonic()
        if now >= self.next_active_check:
            self.next_active_check = now + 60.0
            if mx.get_active_memory() > 0.8 * limit and (victim := pool.lru_evictable(busy())) is not None:
                models.drop(victim)
                self.acted(f"evicted {victim}: MLX active memory over 80% of the limit")

    def idle(self, idle: bool) -> None:
        if not idle:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = time.monotonic()
        elif self.idle_since > 0 and time.monotonic() - self.idle_since > 2.0:
            mx.clear_cache()
            self.idle_since = -1.0

    def acted(self, what: str) -> None:
        log.warning("memory pressure %s: %s", self.level, what)
        self.actions.append({"time": round(time.time(), 3), "level": self.level, "action": what})

    def state(self) -> dict:
        return {"level": self.level, "actions": list(self.actions)}
