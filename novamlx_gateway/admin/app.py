"""The admin API on its own port. Off entirely unless an admin key (or an API key) is set."""
from __future__ import annotations

import hmac
import uuid

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from protocol import messages as m

from ..config import Config
from ..errors import HANDLERS, APIError
from ..middleware import RequestID, _send_error


class AdminAuth:
    """Bearer token or X-Admin-Key, compared in constant time against every admin key."""

    def __init__(self, app, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        h = dict(scope["headers"])
        auth = h.get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else h.get(b"x-admin-key", b"")
        ok = False
        for k in self.keys:
            ok |= hmac.compare_digest(token, k)
        if not ok:
            return await _send_error(send, APIError(401, "A valid admin key is required.", "invalid_admin_key"))
        await self.app(scope, receive, send)


def admin_keys(cfg: Config) -> list[str]:
    return [cfg.admin_key] if cfg.admin_key else list(cfg.api_keys)


async def _json_body(request: Request):
    try:
        return msgspec.json.decode(await request.body())
    except msgspec.DecodeError as e:
        raise APIError(400, f"Invalid JSON: {e}", "invalid_json") from None


async def _settings(request: Request, **changes) -> dict:
    result = await request.app.state.worker.call(m.Settings(f"admin-{uuid.uuid4().hex[:12]}", **changes))
    return result.data


async def memory(request: Request):
    if request.method == "PUT":
        body = await _json_body(request)
        limit = body.get("max_process_memory") if isinstance(body, dict) else None
        if not isinstance(limit, str):
            raise APIError(400, "Send {\"max_process_memory\": \"auto\" | \"80%\" | \"24GB\"}.", "invalid_value",
                           "max_process_memory")
        return JSONResponse(await _settings(request, max_process_memory=limit))
    return JSONResponse(await _settings(request))


async def list_models(request: Request):
    worker, settings = request.app.state.worker, request.app.state.worker.settings
    loaded = set(worker.health.models) if worker.health else {i.id for i in worker.models}
    return JSONResponse({"object": "list", "data": [
        {"id": i.id, "kind": i.kind, "path": i.path, "context_length": i.context_length, "aliases": i.aliases,
         "loaded": i.id in loaded or i.kind != "llm", "settings": settings.get(i.id)} for i in worker.models]})


async def model_settings(request: Request):
    worker = request.app.state.worker
    info = worker.resolve_model(request.path_params["id"])
    if info is None:
        raise APIError(404, f"No model '{request.path_params['id']}'.", "model_not_found", "id")
    if request.method == "PUT":
        return JSONResponse({"id": info.id, "settings": worker.settings.update(info.id, await _json_body(request))})
    return JSONResponse({"id": info.id, "settings": worker.settings.get(info.id)})


async def _model_body(request: Request) -> dict:
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        raise APIError(400, "Send {\"model\": \"<id, folder, .gguf file or hub id on disk>\"}.", "invalid_value", "model")
    return body


async def load_model(request: Request):
    body = await _model_body(request)
    worker = request.app.state.worker
    known = worker.resolve_model(body["model"])
    spec = known.path if known is not None and known.path else body["model"]
    result = await worker.call(m.LoadModel(f"load-{uuid.uuid4().hex[:12]}", spec, bool(body.get("pin"))),
                               timeout=request.app.state.config.worker_start_timeout)
    return JSONResponse(result.data)


async def unload_model(request: Request):
    body = await _model_body(request)
    worker = request.app.state.worker
    info = worker.resolve_model(body["model"])
    result = await worker.call(m.UnloadModel(f"unload-{uuid.uuid4().hex[:12]}", info.id if info else body["model"]))
    return JSONResponse(result.data)


def create_admin_app(cfg: Config, worker) -> Starlette | None:
    keys = admin_keys(cfg)
    if not keys:
        return None
    app = Starlette(routes=[Route("/admin/api/memory", memory, methods=["GET", "PUT"]),
                            Route("/admin/models", list_models, methods=["GET"]),
                            Route("/admin/models/load", load_model, methods=["POST"]),
                            Route("/admin/models/unload", unload_model, methods=["POST"]),
                            Route("/admin/models/{id:path}/settings", model_settings, methods=["GET", "PUT"])],
                    middleware=[Middleware(RequestID), Middleware(AdminAuth, keys=keys)],
                    exception_handlers=HANDLERS)
    app.state.worker = worker
    app.state.config = cfg
    return app
