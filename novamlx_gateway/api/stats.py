"""GET /v1/stats: scheduler, prefix cache and request metrics, as of this request; session and
all-time inference counters."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse


async def stats(request: Request):
    worker = request.app.state.worker
    adm = request.app.state.admission
    h = await worker.stats() or {}
    return JSONResponse({
        "object": "stats",
        "gateway": {"running": adm.running, "queued": adm.queued, "rejected_429": adm.rejected,
                    "worker_restarts": worker.state.restarts},
        "engine": h.get("engine", {}),
        "prefix_cache": h.get("prefix_cache", {}),
        "tokens_total": h.get("tokens_total", 0),
        "tokens_per_s": h.get("tokens_per_s", 0.0),
        "as_of": h.get("time"),
        **request.app.state.usage.snapshot(),  # "session" and "all_time" counters (stores/usage.py)
    })
