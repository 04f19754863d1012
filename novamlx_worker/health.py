"""The health push: a snapshot of the worker every few seconds."""
from __future__ import annotations

import logging
import os
import threading
import time

import mlx.core as mx
import psutil

from protocol import messages as m


def snapshot(engine, last: dict | None = None) -> m.Health:
    """The worker now. last: the push's rate state (tokens and time at the previous push),
    advanced by the push; without it (an on-demand Stats) the rate is since that push."""
    now = time.monotonic()
    tokens = engine.tokens_out
    prev = last if last is not None else dict(engine.rate_state)
    rate = (tokens - prev.get("tokens", 0)) / max(now - prev.get("t", now - 1), 1e-6)
    if last is not None:
        last.update(tokens=tokens, t=now)
    queued = len(engine.scheduler.waiting)
    return m.Health(
        pid=os.getpid(), rss_bytes=psutil.Process().memory_info().rss,
        mlx_active_bytes=mx.get_active_memory(), mlx_peak_bytes=mx.get_peak_memory(),
        mlx_cache_bytes=mx.get_cache_memory(), models=engine.models.loaded(),
        running=len(engine.seqs) - queued, queued=queued, tokens_per_s=round(rate, 2),
        memory={**engine.memory.state(), "pressure": engine.pressure.state()}, kv_reserved_bytes=engine.scheduler.kv_reserved, **engine.stats(),
        engine_heartbeat_age_s=round(now - engine.heartbeat, 3), time=time.time(),
        steps=engine.steps, tokens_total=tokens, peak_batch=engine.peak_batch, device=str(mx.default_device()),
        ranks=[{"rank": i, "rss_bytes": b} for i, b in enumerate(engine.lockstep.rank_memory)] if engine.lockstep else [])


def start_health_push(engine, emit, interval: float) -> threading.Thread:
    def loop():
        last = engine.rate_state
        while not engine.stopping:
            try:
                emit(snapshot(engine, last))
            except Exception:  # noqa: BLE001 - a bad snapshot must not end the health push
                logging.getLogger("novamlx.health").exception("health snapshot failed")
            time.sleep(interval)

    t = threading.Thread(target=loop, name="health", daemon=True)
    t.start()
    return t
