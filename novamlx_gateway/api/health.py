"""GET /health: gateway and worker state, and the worker's numbers as of this request."""
from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse


async def snapshot(state) -> dict:
    """Gateway and worker state; `state`: the inference app's state (the admin status shows it too)."""
    worker = state.worker
    st = worker.state
    return {
        "status": "ok" if st.ready else ("starting" if st.restarts == 0 and not worker.models else "degraded"),
        "worker": {"pid": st.pid, "ready": st.ready, "restarts": st.restarts, "last_exit_code": st.last_exit},
        "models": [i.id for i in worker.models],
        "in_flight": len(worker.pending),
        "requests": {"running": state.admission.running, "queued": state.admission.queued,
                     "rejected": state.admission.rejected,
                     "rejected_by_kind": dict(worker.rejected), "poison_requests": worker.crashes_by_request},
        "uptime_s": round(time.time() - state.started_at, 1),
        "health": await worker.stats(),
        "health_log": str(worker.health_log),
        "update": state.updates.state(),
    }


async def health(request: Request):
    body = await snapshot(request.app.state)
    return JSONResponse(body, status_code=200 if body["worker"]["ready"] else 503)
