"""GET /v1/stats: scheduler, prefix cache and request metrics."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse


async def stats(request: Request):
    worker = request.app.state.worker
    adm = request.app.state.admission
    h = worker.health
    return JSONResponse({
        "object": "stats",
        "gateway": {"running": adm.running, "queued": adm.queued, "rejected_429": adm.rejected,
                    "worker_restarts": worker.state.restarts},
        "engine": h.engine if h else {},
        "prefix_cache": h.prefix_cache if h else {},
        "tokens_total": h.tokens_total if h else 0,
        "tokens_per_s": h.tokens_per_s if h else 0.0,
        "as_of": h.time if h else None,
    })
