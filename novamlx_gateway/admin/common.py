"""What the admin routes share: the JSON body, the worker's memory and KV state."""
from __future__ import annotations

import uuid

import msgspec
from starlette.requests import Request

from protocol import messages as m

from ..errors import APIError


async def json_body(request: Request):
    try:
        return msgspec.json.decode(await request.body())
    except msgspec.DecodeError as e:
        raise APIError(400, f"Invalid JSON: {e}", "invalid_json") from None
    except RecursionError:
        raise APIError(400, "The JSON body is nested too deeply.", "invalid_json") from None


async def worker_settings(request: Request, **changes) -> dict:
    result = await request.app.state.worker.call(m.Settings(f"admin-{uuid.uuid4().hex[:12]}", **changes))
    return result.data
