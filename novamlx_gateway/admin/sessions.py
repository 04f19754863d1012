"""Sessions on the admin port: list, delete, save, restore, fork (engine/sessions.py keeps them).

    GET    /admin/api/sessions
    DELETE /admin/api/sessions/{id}
    POST   /admin/api/sessions/{id}/save
    POST   /admin/api/sessions/{id}/restore     {"model": ID}  (optional: refuse another model's)
    POST   /admin/api/sessions/{id}/fork        {"new_id": ID}
"""
from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse

from protocol import messages as m

from ..errors import APIError
from .common import json_body


async def _op(request: Request, op: str, **kw) -> dict:
    cmd = m.SessionOp(f"session-{uuid.uuid4().hex[:12]}", op, request.path_params.get("id", ""), **kw)
    return (await request.app.state.worker.call(cmd)).data


async def sessions(request: Request):
    if request.method == "DELETE":
        return JSONResponse(await _op(request, "delete"))
    return JSONResponse(await _op(request, "list"))


async def session_action(request: Request):
    action = request.path_params["action"]
    body = await json_body(request) if (await request.body()).strip() else {}
    if not isinstance(body, dict):
        raise APIError(400, "Send a JSON object.", "invalid_value")
    if action == "save":
        return JSONResponse(await _op(request, "save"))
    if action == "restore":
        model = body.get("model")
        if model is not None:
            info = request.app.state.worker.resolve_model(str(model))
            model = info.id if info is not None else str(model)
        return JSONResponse(await _op(request, "restore", model=model))
    if action == "fork":
        new_id = body.get("new_id") or f"{request.path_params['id']}-fork-{uuid.uuid4().hex[:6]}"
        if not isinstance(new_id, str):
            raise APIError(400, "Invalid 'new_id': expected a string.", "invalid_value", "new_id")
        return JSONResponse(await _op(request, "fork", new_session=new_id))
    raise APIError(404, f"No session action '{action}': use save, restore or fork.", "not_found")
