"""Admin: GET /admin/api/agents (installed agents, install links), GET /admin/api/agents/{name}/config
(?model=&env=1: the config text for this server), POST .../config ({"model"}: written, with a backup)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import agents
from ..errors import APIError
from .common import json_body


async def agent_list(request: Request):
    return JSONResponse({"agents": agents.detect()})


def _target(request: Request, model: str | None) -> agents.Target:
    cfg, worker = request.app.state.config, request.app.state.worker
    info = worker.resolve_model(model or "default")
    if info is None or info.kind not in ("llm", "vlm"):
        raise APIError(404, f"The model `{model}` does not exist.", "model_not_found", "model")
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    return agents.Target(f"http://{host}:{cfg.port}", cfg.api_keys[0] if cfg.api_keys else None, info.id,
                         info.context_length or 0, min(4096, info.context_length or 4096))


async def agent_config(request: Request):
    name = request.path_params["name"]
    if name not in agents.AGENTS:
        raise APIError(404, f"Unknown agent `{name}`: {', '.join(agents.AGENTS)}.", "not_found", "name")
    a = agents.AGENTS[name]
    if request.method == "POST":
        body = await json_body(request) if await request.body() else {}
        model = body.get("model") if isinstance(body, dict) else None
        return JSONResponse(agents.write(name, _target(request, model)))
    env = request.query_params.get("env") in ("1", "true")
    _, text = agents.config(name, _target(request, request.query_params.get("model")), env_form=env)
    return JSONResponse({"name": name, "path": a.path, "format": "env" if env else a.format, "content": text})
