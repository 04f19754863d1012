"""Cloud models: remote OpenAI-compatible endpoints served beside the local models.

Configured as `cloud_models` (TOML tables, or `--cloud-model id=NAME,url=URL[,model=REMOTE][,key_env=VAR]`),
they are listed in /v1/models; chat and completions requests naming them are passed through
(the body as sent, with the remote model name), streams relayed chunk by chunk. The key is
read from the named environment variable and never logged.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import APIError


@dataclass(frozen=True)
class CloudModel:
    id: str
    url: str  # base URL ending in /v1
    model: str  # the remote model name
    key_env: str | None = None

    @property
    def key(self) -> str | None:
        return os.environ.get(self.key_env) if self.key_env else None


def parse_cloud_models(items: list) -> dict[str, CloudModel]:
    out = {}
    for item in items or []:
        if isinstance(item, str):  # id=NAME,url=URL,model=REMOTE,key_env=VAR
            item = dict(part.split("=", 1) for part in item.split(",") if "=" in part)
        if not isinstance(item, dict) or not item.get("id") or not item.get("url"):
            raise SystemExit(f"cloud model {item!r}: needs id and url")
        out[item["id"]] = CloudModel(item["id"], item["url"].rstrip("/"), item.get("model") or item["id"],
                                     item.get("key_env"))
    return out


def model_object(cm: CloudModel) -> dict:
    return {"id": cm.id, "object": "model", "created": 0, "owned_by": "cloud"}


async def passthrough(request: Request, cm: CloudModel, path: str) -> Response:
    try:
        body = json.loads(await request.body())
    except json.JSONDecodeError:
        raise APIError(400, "We could not parse the JSON body of your request.", "invalid_json") from None
    body["model"] = cm.model
    headers = {"content-type": "application/json"}
    if cm.key:
        headers["authorization"] = f"Bearer {cm.key}"
    client = httpx.AsyncClient(timeout=httpx.Timeout(request.app.state.config.request_timeout, connect=10))
    try:
        upstream = await client.send(client.build_request("POST", cm.url + path, json=body, headers=headers),
                                     stream=True)
    except httpx.HTTPError as e:
        await client.aclose()
        raise APIError(502, f"The cloud endpoint for `{cm.id}` could not be reached ({type(e).__name__}).",
                       "upstream_unreachable") from None

    async def close():
        await upstream.aclose()
        await client.aclose()

    keep = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "cache-control")}
    if body.get("stream"):
        return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, headers=keep,
                                 background=BackgroundTask(close))
    content = await upstream.aread()
    await close()
    return Response(content, status_code=upstream.status_code, headers=keep)
