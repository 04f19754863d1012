"""GET /health: gateway and worker state, and the worker's numbers as of this request."""
from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse


async def health(request: Request):
    worker = request.app.state.worker
    st = worker.state
    body = {
        "status": "ok" if st.ready else ("starting" if st.restarts == 0 and not worker.models else "degraded"),
        "worker": {"pid": st.pid, "ready": st.ready, "restarts": st.restarts, "last_exit_code": st.last_exit},
        "models": [i.id for i in worker.models],
        "in_flight": len(worker.pending),
        "requests": {"running": request.app.state.admission.running, "queued": request.app.state.admission.queued,
                     "rejected": request.app.state.admission.rejected,
                     "rejected_by_kind": dict(worker.rejected), "poison_requests": worker.crashes_by_request},
        "uptime_s": round(time.time() - request.app.state.started_at, 1),
        "health": await worker.stats(),
        "health_log": str(worker.health_log),
    }
    return JSONResponse(body, status_code=200 if st.ready else 503)
