"""Cloud models: remote OpenAI-compatible endpoints served beside the local models.

Configured as `cloud_models` (TOML tables, or
`--cloud-model id=NAME,url=URL[,model=REMOTE][,key_env=VAR][,native=messages+responses]`), they are
listed in /v1/models. Chat and completions requests naming them are passed through (the body as
sent, with the remote model name), streams relayed chunk by chunk. Anthropic Messages and
Responses requests are passed through too when the remote speaks that API (`native`); otherwise
they are translated to the remote's chat completions and its stream is read back as the same
deltas a local model produces (`CloudGeneration`), so the route renders it exactly as its own.
The key is read from the named environment variable and never logged.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from protocol import messages as m

from ..errors import APIError, worker_error


@dataclass(frozen=True)
class CloudModel:
    id: str
    url: str  # base URL ending in /v1
    model: str  # the remote model name
    key_env: str | None = None
    native: tuple[str, ...] = ()  # APIs beyond chat/completions the remote speaks: messages, responses

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
        native = item.get("native") or ()
        native = tuple(native.replace("|", "+").split("+")) if isinstance(native, str) else tuple(native)
        if set(native) - {"messages", "responses", ""}:
            raise SystemExit(f"cloud model {item['id']!r}: native takes messages and/or responses")
        out[item["id"]] = CloudModel(item["id"], item["url"].rstrip("/"), item.get("model") or item["id"],
                                     item.get("key_env"), tuple(n for n in native if n))
    return out


def model_object(cm: CloudModel) -> dict:
    return {"id": cm.id, "object": "model", "created": 0, "owned_by": "cloud"}


async def passthrough(request: Request, cm: CloudModel, path: str) -> Response:
    try:
        body = json.loads(await request.body())
    except json.JSONDecodeError:
        raise APIError(400, "We could not parse the JSON body of your request.", "invalid_json") from None
    body["model"] = cm.model
    client, upstream = await _open(cm, path, body, request.app.state.config.request_timeout)

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


def _headers(cm: CloudModel) -> dict:
    headers = {"content-type": "application/json"}
    if cm.key:  # OpenAI-style and Anthropic-style remotes each read their own header
        headers["authorization"] = f"Bearer {cm.key}"
        headers["x-api-key"] = cm.key
    return headers


async def _open(cm: CloudModel, path: str, body: dict, timeout: float):
    client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10))
    try:
        upstream = await client.send(client.build_request("POST", cm.url + path, json=body, headers=_headers(cm)),
                                     stream=True)
    except httpx.HTTPError as e:
        await client.aclose()
        raise APIError(502, f"The cloud endpoint for `{cm.id}` could not be reached ({type(e).__name__}).",
                       "upstream_unreachable") from None
    return client, upstream


def chat_message(msg: m.ChatMessage) -> dict:
    """A protocol message as an OpenAI chat message (images by their source URL or data URI)."""
    out: dict = {"role": msg.role}
    if msg.parts:
        out["content"] = [{"type": "text", "text": p.text or ""} if p.type == "text"
                          else {"type": "image_url", "image_url": {"url": p.source}} for p in msg.parts]
    else:
        out["content"] = msg.content or ""
    if msg.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in msg.tool_calls]
    if msg.tool_call_id:
        out["tool_call_id"] = msg.tool_call_id
    return out


def chat_body(cm: CloudModel, args) -> dict:
    """GenerateArgs (see generate_args.py) as a streamed chat-completions body for the remote."""
    body = {"model": cm.model, "messages": [chat_message(x) for x in args.messages], "stream": True,
            "stream_options": {"include_usage": True}}
    for name in ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty", "max_tokens"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.stop:
        body["stop"] = args.stop
    if args.tools:
        body["tools"] = args.tools
        if not args.parse_tools:
            body["tool_choice"] = "none"
        elif args.force_tool:
            body["tool_choice"] = "required" if args.force_tool == "required" else \
                {"type": "function", "function": {"name": args.force_tool}}
    if args.response_format:
        fmt = args.response_format
        body["response_format"] = fmt if fmt.get("type") == "json_object" else \
            {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt.get("schema")}}
    return body


@dataclass
class CloudGeneration:
    """A remote chat-completions stream read back as protocol events: the same interface the
    routes use of a local Generation (events, error, abort, cmds, prompt_counts, cached_tokens)."""
    cm: CloudModel
    body: dict
    timeout: float
    cmds: list = field(default_factory=list)
    prompt_counts: dict = field(default_factory=dict)
    cached_tokens: dict = field(default_factory=dict)

    def __post_init__(self):
        self.id = f"cloud-{uuid.uuid4().hex[:12]}"
        self.cmds = [m.Generate(self.id, self.cm.id)]
        self._client = self._upstream = None

    async def start(self) -> None:
        self._client, self._upstream = await _open(self.cm, "/chat/completions", self.body, self.timeout)
        if self._upstream.status_code != 200:
            raw = await self._upstream.aread()
            await self.aclose()
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")[:500]
            status = self._upstream.status_code
            raise APIError(status if 400 <= status < 500 else 502,
                           f"The cloud endpoint for `{self.cm.id}` answered {status}: {message}", "upstream_error")

    async def events(self):
        calls: dict[int, dict] = {}
        reason, usage = "stop", None
        try:
            async for line in self._upstream.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if chunk.get("error"):
                    yield 0, m.Error(self.id, f"The cloud endpoint failed: {chunk['error'].get('message')}",
                                     "upstream_error")
                    return
                usage = chunk.get("usage") or usage
                for ch in chunk.get("choices") or []:
                    d = ch.get("delta") or {}
                    text = d.get("content") or ""
                    thought = d.get("reasoning_content") or d.get("reasoning") or ""
                    if text or thought:
                        yield 0, m.Delta(self.id, text=text, reasoning=thought)
                    for tc in d.get("tool_calls") or []:
                        c = calls.setdefault(tc.get("index", 0), {"id": "", "name": "", "arguments": ""})
                        fn = tc.get("function") or {}
                        c["id"] = tc.get("id") or c["id"]
                        c["name"] += fn.get("name") or ""
                        c["arguments"] += fn.get("arguments") or ""
                    reason = ch.get("finish_reason") or reason
        except httpx.HTTPError as e:
            yield 0, m.Error(self.id, f"The cloud endpoint for `{self.cm.id}` broke off ({type(e).__name__}).",
                             "upstream_unreachable")
            return
        finally:
            await self.aclose()
        if calls:
            yield 0, m.Delta(self.id, tool_calls=[
                m.ToolCallDelta(i, c["id"] or f"call_{uuid.uuid4().hex[:24]}", c["name"], c["arguments"] or "{}",
                                incomplete=reason == "length") for i, c in sorted(calls.items())])
        u = usage or {}
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        yield 0, m.Finished(self.id, reason if reason in ("stop", "length", "tool_calls") else "stop",
                            m.Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0), cached))

    def error(self, ev: m.Error) -> APIError:
        return worker_error(ev)

    async def aclose(self) -> None:
        if self._upstream is not None:
            await self._upstream.aclose()
        if self._client is not None:
            await self._client.aclose()

    def abort(self) -> None:
        pass  # the stream is closed when events() ends or is dropped (its finally)
