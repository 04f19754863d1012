"""The admin API on its own port. Off entirely unless an admin key is set (an API key never opens it)."""
from __future__ import annotations

import hmac
import uuid

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from protocol import messages as m

from ..config import Config, on_off
from ..errors import HANDLERS, APIError
from ..hub import download as dl
from ..middleware import RequestID, _send_error, is_public
from ..web import page_routes
from .common import json_body, worker_settings
from .agents import agent_config, agent_list
from .jobs import Job, bench_start, job_cancel, job_status, ppl_start
from .mcp import mcp_server, mcp_servers, mcp_tools
from .sessions import session_action, sessions
from .status import status
from .turboquant import turboquant

DASHBOARD = ("/admin/dashboard", "/admin/dashboard/")  # the page and its assets: it asks for the key itself


class AdminAuth:
    """Bearer token or X-Admin-Key, compared in constant time against every admin key."""

    def __init__(self, app, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_public(scope["path"], DASHBOARD):
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
    """Only a dedicated admin key opens the admin API: an inference key never does."""
    return [cfg.admin_key] if cfg.admin_key else []


async def memory(request: Request):
    if request.method == "PUT":
        body = await json_body(request)
        limit = body.get("max_process_memory") if isinstance(body, dict) else None
        if not isinstance(limit, str):
            raise APIError(400, "Send {\"max_process_memory\": \"auto\" | \"80%\" | \"24GB\"}.", "invalid_value",
                           "max_process_memory")
        return JSONResponse(await worker_settings(request, max_process_memory=limit))
    return JSONResponse(await worker_settings(request))


async def list_models(request: Request):
    worker, catalog = request.app.state.worker, request.app.state.catalog
    def row(i):
        found = catalog.found.get(i.id)
        return {"id": i.id, "kind": i.kind, "path": i.path, "context_length": i.context_length, "aliases": i.aliases,
                "loaded": i.loaded, "downloaded": found is not None, "source": found.source if found else "config",
                "size_bytes": found.size_bytes if found else None, "settings": worker.settings.get(i.id)}
    return JSONResponse({"object": "list", "data": [row(i) for i in worker.models]})


async def model_settings(request: Request):
    worker = request.app.state.worker
    info = worker.resolve_model(request.path_params["id"])
    if info is None:
        raise APIError(404, f"No model '{request.path_params['id']}'.", "model_not_found", "id")
    if request.method == "PUT":
        body = await json_body(request)
        alias = body.get("model_alias") if isinstance(body, dict) else None
        taken = worker.resolve_model(alias) if isinstance(alias, str) and alias else None
        if taken is not None and taken.id != info.id:  # the alias would hide that model from every client
            raise APIError(409, f"Invalid 'model_alias': {alias!r} already names the model `{taken.id}`.",
                           "alias_conflict", "model_alias")
        _check_draft(worker, info, body)
        updated = worker.settings.update(info.id, body)
        await request.app.state.catalog.push_policies()  # ttl, pinning, context window: the worker applies them
        return JSONResponse({"id": info.id, "settings": updated})
    return JSONResponse({"id": info.id, "settings": worker.settings.get(info.id)})


def _check_draft(worker, info, body) -> None:
    """A draft model must be another served text model (its tokenizer is checked when the target
    loads: a mismatch is logged and shown in /v1/stats as draft_model_error)."""
    name = body.get("draft_model") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        return
    draft = worker.resolve_model(name)
    if draft is None:
        raise APIError(400, f"Invalid 'draft_model': no served model is named {name!r}.", "invalid_value", "draft_model")
    why = ("a model cannot draft for itself" if draft.id == info.id
           else f"`{info.id}` is a {info.kind} model; drafts serve text models" if info.kind != "llm"
           else f"`{draft.id}` is a {draft.kind} model; a draft is a smaller text model with the same tokenizer"
           if draft.kind != "llm" else "")
    if why:
        raise APIError(400, f"Invalid 'draft_model': {why}.", "invalid_value", "draft_model")


async def _model_body(request: Request) -> dict:
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        raise APIError(400, "Send {\"model\": \"<id, folder, .gguf file or hub id on disk>\"}.", "invalid_value", "model")
    return body


async def load_model(request: Request):
    body = await _model_body(request)
    worker = request.app.state.worker
    known = worker.resolve_model(body["model"])
    spec = known.id if known is not None else body["model"]  # by id: the worker's entry, never a second copy
    result = await worker.call(m.LoadModel(f"load-{uuid.uuid4().hex[:12]}", spec, bool(body.get("pin"))),
                               timeout=request.app.state.config.worker_start_timeout)
    return JSONResponse(result.data)


async def unload_model(request: Request):
    body = await _model_body(request)
    worker = request.app.state.worker
    info = worker.resolve_model(body["model"])
    result = await worker.call(m.UnloadModel(f"unload-{uuid.uuid4().hex[:12]}", info.id if info else body["model"]))
    return JSONResponse(result.data)


async def discover(request: Request):
    return JSONResponse(await request.app.state.catalog.rescan())


async def delete_model(request: Request):
    return JSONResponse(await request.app.state.catalog.delete(request.path_params["id"]))


async def search(request: Request):
    q = request.query_params
    try:
        limit = int(q.get("limit", "20"))
    except ValueError:
        raise APIError(400, "limit must be an integer.", "invalid_value", "limit") from None
    if not 1 <= limit <= 100:
        raise APIError(400, "limit must be between 1 and 100.", "invalid_value", "limit")
    try:
        found = await anyio.to_thread.run_sync(lambda: dl.search(
            q.get("q", q.get("query", "")), on_off(q.get("mlx_only", "true")), q.get("sort", "trending"), limit,
            request.app.state.config.hf_endpoint or None))
    except dl.DownloadError as e:
        raise APIError(400, str(e), "invalid_value", "sort") from None
    except Exception as e:  # noqa: BLE001 - the hub is a remote service: its failure is a 502, not ours
        raise APIError(502, f"The Hugging Face hub could not be searched: {e}", "hub_unreachable") from None
    return JSONResponse({"object": "list", "data": found})


async def start_download(request: Request):
    body = await json_body(request)
    repo = body.get("repo_id") or body.get("model") if isinstance(body, dict) else None
    if not isinstance(repo, str) or not repo:
        raise APIError(400, "Send {\"repo_id\": \"owner/name\"} (optional: revision, allow_patterns).",
                       "invalid_value", "repo_id")
    allow = body.get("allow_patterns")
    if allow is not None and (not isinstance(allow, list) or not all(isinstance(p, str) for p in allow)):
        raise APIError(400, "allow_patterns must be a list of glob strings.", "invalid_value", "allow_patterns")
    revision = body.get("revision") or "main"
    task = request.app.state.catalog.start_download(repo, str(revision), allow)
    return JSONResponse(task.to_dict(), status_code=202)


async def downloads(request: Request):
    tasks = request.app.state.catalog.downloads.values()
    return JSONResponse({"object": "list", "data": [t.to_dict() for t in tasks]})


async def usage_stats(request: Request):
    return JSONResponse(request.app.state.usage.snapshot())


async def clear_stats(request: Request):
    """{"scope": "session" | "all_time" | "all"} (default "session"): those counters start over."""
    body = await json_body(request) if await request.body() else {}
    scope = body.get("scope", "session") if isinstance(body, dict) else None
    if scope not in ("session", "all_time", "all"):
        raise APIError(400, 'Send {"scope": "session" | "all_time" | "all"}.', "invalid_value", "scope")
    request.app.state.usage.clear(scope)
    return JSONResponse({"cleared": scope, **request.app.state.usage.snapshot()})


async def download_task(request: Request):
    catalog = request.app.state.catalog
    if request.method == "DELETE" or request.url.path.endswith("/cancel"):
        return JSONResponse(catalog.cancel(request.path_params["task"]).to_dict())
    return JSONResponse(catalog.task(request.path_params["task"]).to_dict())


def create_admin_app(cfg: Config, main: Starlette) -> Starlette | None:
    """The admin API over the inference app `main`'s worker, catalogue, stats and MCP servers."""
    keys = admin_keys(cfg)
    if not keys:
        return None
    app = Starlette(routes=[*page_routes("/admin/dashboard", "dashboard.html"),
                            Route("/admin/api/status", status, methods=["GET"]),
                            Route("/admin/api/memory", memory, methods=["GET", "PUT"]),
                            Route("/admin/api/turboquant", turboquant, methods=["GET", "PUT"]),
                            Route("/admin/api/stats", usage_stats, methods=["GET"]),
                            Route("/admin/api/stats/clear", clear_stats, methods=["POST"]),
                            Route("/admin/api/agents", agent_list, methods=["GET"]),
                            Route("/admin/api/agents/{name}/config", agent_config, methods=["GET", "POST"]),
                            Route("/admin/api/mcp/servers", mcp_servers, methods=["GET", "POST"]),
                            Route("/admin/api/mcp/servers/{name}", mcp_server, methods=["DELETE"]),
                            Route("/admin/api/mcp/servers/{name}/{action}", mcp_server, methods=["POST"]),
                            Route("/admin/api/mcp/tools", mcp_tools, methods=["GET"]),
                            Route("/admin/api/bench/start", bench_start, methods=["POST"]),
                            Route("/admin/api/ppl/start", ppl_start, methods=["POST"]),
                            Route("/admin/api/bench/status", job_status, methods=["GET"]),
                            Route("/admin/api/bench/cancel", job_cancel, methods=["POST"]),
                            Route("/admin/api/ppl/status", job_status, methods=["GET"]),
                            Route("/admin/api/ppl/cancel", job_cancel, methods=["POST"]),
                            Route("/admin/api/sessions", sessions, methods=["GET"]),
                            Route("/admin/api/sessions/{id}", sessions, methods=["DELETE"]),
                            Route("/admin/api/sessions/{id}/{action}", session_action, methods=["POST"]),
                            Route("/admin/models", list_models, methods=["GET"]),
                            Route("/admin/models/load", load_model, methods=["POST"]),
                            Route("/admin/models/unload", unload_model, methods=["POST"]),
                            Route("/admin/models/discover", discover, methods=["POST"]),
                            Route("/admin/models/search", search, methods=["GET"]),
                            Route("/admin/models/download", start_download, methods=["POST"]),
                            Route("/admin/models/downloads", downloads, methods=["GET"]),
                            Route("/admin/models/downloads/{task}", download_task, methods=["GET", "DELETE"]),
                            Route("/admin/models/downloads/{task}/cancel", download_task, methods=["POST"]),
                            Route("/admin/models/{id:path}/settings", model_settings, methods=["GET", "PUT"]),
                            Route("/admin/models/{id:path}", delete_model, methods=["DELETE"])],
                    middleware=[Middleware(RequestID), Middleware(AdminAuth, keys=keys)],
                    exception_handlers=HANDLERS)
    app.state.main = main.state
    app.state.worker, app.state.catalog = main.state.worker, main.state.catalog
    app.state.usage, app.state.mcp = main.state.usage, main.state.mcp
    app.state.config = cfg
    app.state.bench, app.state.ppl = Job("benchmark"), Job("perplexity")
    return app
