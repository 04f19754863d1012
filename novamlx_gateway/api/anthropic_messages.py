"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's wire format <-> protocol.

Streams follow Anthropic's event sequence exactly, each frame with its `event:` line:
message_start, content_block_start, ping, content_block_delta*, content_block_stop,
message_delta (stop_reason, usage), message_stop; a failure after the first byte is an
`error` event.
"""
from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from protocol import messages as m

from .. import images, sse
from ..errors import APIError
from ..generation import Generation, model_or_404
from .openai_schema import parse_body, priority_of


class ContentBlock(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: Any = None
    is_error: bool | None = None
    thinking: str | None = None
    signature: str | None = None
    source: Any = None


class MessageIn(msgspec.Struct):
    role: str
    content: str | list[ContentBlock]


class ToolIn(msgspec.Struct, kw_only=True):
    name: str
    description: str | None = None
    input_schema: dict = {}
    type: str | None = None


class MessagesRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: list[MessageIn]
    max_tokens: int | None = None
    system: str | list[ContentBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict | None = None
    tools: list[ToolIn] | None = None
    tool_choice: dict | None = None
    thinking: dict | None = None
    priority: str | int | None = None


class CountRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: list[MessageIn]
    system: str | list[ContentBlock] | None = None
    tools: list[ToolIn] | None = None
    thinking: dict | None = None
    tool_choice: dict | None = None


def _block_text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(b.get("text", "") if isinstance(b, dict) else (b.text or "") for b in content)


def _image_source(source, where: str) -> str:
    """An Anthropic image source (base64 or url) as a data URI or URL."""
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("data"), str):
        return f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    if kind == "url" and isinstance(source.get("url"), str):
        return source["url"]
    raise APIError(400, f"{where}: expected {{\"type\": \"base64\", \"media_type\", \"data\"}} or "
                        f"{{\"type\": \"url\", \"url\"}}.", None, where)


def to_protocol(req) -> tuple[list[m.ChatMessage], list[dict] | None]:
    """Anthropic messages (system, text, tool_use, tool_result) as protocol chat messages."""
    out: list[m.ChatMessage] = []
    system = req.system if isinstance(req.system, str) else _block_text([b for b in (req.system or []) if b.type == "text"])
    if system:
        out.append(m.ChatMessage("system", system))
    if not req.messages:
        raise APIError(400, "messages: at least one message is required", None, "messages")
    for i, msg in enumerate(req.messages):
        if msg.role not in ("user", "assistant"):
            raise APIError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'", None, f"messages.{i}.role")
        if isinstance(msg.content, str):
            out.append(m.ChatMessage(msg.role, msg.content))
            continue
        parts, calls = [], []
        for j, b in enumerate(msg.content):
            if b.type == "text":
                parts.append(m.Part("text", b.text or ""))
            elif b.type == "image":
                parts.append(m.Part("image", source=_image_source(b.source, f"messages.{i}.content.{j}.source")))
            elif b.type == "tool_use" and msg.role == "assistant":
                calls.append(m.ToolCall(b.id or f"toolu_{uuid.uuid4().hex[:24]}", b.name or "",
                                        json.dumps(b.input if b.input is not None else {})))
            elif b.type == "tool_result" and msg.role == "user":
                result = _block_text(b.content) if not isinstance(b.content, str) else b.content
                if b.is_error:
                    result = f"Error: {result}"
                out.append(m.ChatMessage("tool", result, tool_call_id=b.tool_use_id))
            elif b.type in ("thinking", "redacted_thinking"):
                continue  # earlier reasoning is not replayed into the prompt
            elif b.type == "document":
                raise APIError(400, f"messages.{i}.content.{j}: document input is not supported",
                               None, f"messages.{i}.content.{j}")
            else:
                raise APIError(400, f"messages.{i}.content.{j}.type: unsupported content block type {b.type!r}",
                               None, f"messages.{i}.content.{j}.type")
        if parts or calls:
            out.append(images.message(msg.role, parts, tool_calls=calls or None))
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                               "parameters": t.input_schema}} for t in (req.tools or [])] or None
    return out, tools


def _stop_reason(reason: str | None, stop: str | None) -> str:
    if reason == "length":
        return "max_tokens"
    if reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if stop else "end_turn"


def _input(arguments: str):
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        value = {}
    return value if isinstance(value, dict) else {"value": value}


def _tool_use(call: m.ToolCallDelta) -> dict:
    tid = call.id if call.id.startswith("toolu_") else "toolu_" + call.id.removeprefix("call_")
    return {"type": "tool_use", "id": tid, "name": call.name, "input": _input(call.arguments)}


def _usage(input_tokens: int, output_tokens: int, cached: int = 0) -> dict:
    return {"input_tokens": input_tokens - cached, "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


async def messages(request: Request):
    req: MessagesRequest = await parse_body(request, MessagesRequest)
    worker, cfg = request.app.state.worker, request.app.state.config
    if req.max_tokens is None:
        raise APIError(400, "max_tokens: Field required", None, "max_tokens")
    if req.max_tokens < 1:
        raise APIError(400, "max_tokens: Input should be greater than or equal to 1", None, "max_tokens")
    for name, value, lo, hi in (("temperature", req.temperature, 0, 1), ("top_p", req.top_p, 0, 1)):
        if value is not None and not lo <= value <= hi:
            raise APIError(400, f"{name}: Input should be between {lo} and {hi}", None, name)
    info = model_or_404(worker, req.model)
    chat, tools = to_protocol(req)
    await images.resolve(chat, request.app.state.config, info)
    thinking = req.thinking or {}
    budget = thinking.get("budget_tokens") if thinking.get("type") == "enabled" else None
    enable = {"enabled": True, "disabled": False}.get(thinking.get("type"))
    sampling = m.Sampling(thinking_budget=budget, temperature=1.0 if req.temperature is None else req.temperature,
                          top_p=1.0 if req.top_p is None else req.top_p, top_k=max(req.top_k or 0, 0),
                          max_tokens=req.max_tokens, stop=[s for s in (req.stop_sequences or []) if s])
    rid = f"msg_{uuid.uuid4().hex[:24]}"
    choice = req.tool_choice or {}
    parse = bool(tools) and choice.get("type") != "none"
    force = {"any": "required", "tool": choice.get("name")}.get(choice.get("type")) if tools else None
    cmd = m.Generate(rid, info.id, sampling, messages=chat, tools=tools, parse_tools=parse, force_tool=force,
                     template_kwargs={"enable_thinking": enable} if enable is not None else None,
                     priority=priority_of(request, req.priority), fit_max_tokens=True)
    gen = Generation(worker, [cmd], cfg.request_timeout, request.app.state.admission)
    await gen.start()
    if req.stream:
        return StreamingResponse(_stream(gen, rid, info.id), media_type="text/event-stream", headers=sse.SSE_HEADERS)
    (c,) = await gen.collect()
    u = gen.usage()
    text = "".join(c.text)
    thinking = [{"type": "thinking", "thinking": "".join(c.reasoning), "signature": ""}] if c.reasoning else []
    content = thinking + ([{"type": "text", "text": text}] if text or not (c.tool_calls or thinking) else []) \
        + [_tool_use(t) for t in c.tool_calls]
    return JSONResponse({
        "id": rid, "type": "message", "role": "assistant", "model": info.id,
        "content": content,
        "stop_reason": _stop_reason(c.finish_reason, c.stop), "stop_sequence": c.stop,
        "usage": _usage(u["prompt_tokens"], u["completion_tokens"], u["prompt_tokens_details"]["cached_tokens"]),
    })


async def _stream(gen: Generation, rid: str, model: str):
    prompt = gen.prompt_counts.get(rid, 0)
    block = -1  # index of the open content block
    text_open = thinking_open = False

    def start(kind: dict):
        nonlocal block
        block += 1
        return sse.event("content_block_start", {"type": "content_block_start", "index": block, "content_block": kind})

    def stop():
        return sse.event("content_block_stop", {"type": "content_block_stop", "index": block})

    try:
        yield sse.event("message_start", {"type": "message_start", "message": {
            "id": rid, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": _usage(prompt, 1)}})
        yield sse.event("ping", {"type": "ping"})
        async for _, ev in gen.events():
            if isinstance(ev, m.Delta):
                if ev.reasoning:
                    if not thinking_open:
                        yield start({"type": "thinking", "thinking": "", "signature": ""})
                        thinking_open = True
                    yield sse.event("content_block_delta", {"type": "content_block_delta", "index": block,
                                                            "delta": {"type": "thinking_delta", "thinking": ev.reasoning}})
                if thinking_open and (ev.text or ev.tool_calls):
                    yield stop()
                    thinking_open = False
                if ev.text:
                    if not text_open:
                        yield start({"type": "text", "text": ""})
                        text_open = True
                    yield sse.event("content_block_delta", {"type": "content_block_delta", "index": block,
                                                            "delta": {"type": "text_delta", "text": ev.text}})
                for call in ev.tool_calls or []:
                    if text_open:
                        yield stop()
                        text_open = False
                    use = _tool_use(call)
                    yield start({**use, "input": {}})
                    yield sse.event("content_block_delta", {"type": "content_block_delta", "index": block,
                                                            "delta": {"type": "input_json_delta",
                                                                      "partial_json": json.dumps(use["input"])}})
                    yield stop()
            elif isinstance(ev, m.Finished):
                if block < 0:  # an empty answer still has one (empty) text block
                    yield start({"type": "text", "text": ""})
                    text_open = True
                if text_open or thinking_open:
                    yield stop()
                yield sse.event("message_delta", {
                    "type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(ev.finish_reason, ev.stop), "stop_sequence": ev.stop},
                    "usage": {"output_tokens": ev.usage.completion_tokens}})
                yield sse.event("message_stop", {"type": "message_stop"})
            elif isinstance(ev, m.Error):
                yield sse.event("error", APIError(ev.status, ev.message, ev.code).anthropic()[1])
                return
    except APIError as e:
        yield sse.event("error", e.anthropic()[1])
    finally:
        gen.abort()


async def count_tokens(request: Request):
    req: CountRequest = await parse_body(request, CountRequest)
    worker = request.app.state.worker
    info = model_or_404(worker, req.model)
    chat, tools = to_protocol(req)
    await images.resolve(chat, request.app.state.config, info)
    result = await worker.call(m.CountTokens(f"count_{uuid.uuid4().hex[:16]}", info.id, messages=chat, tools=tools))
    return JSONResponse({"input_tokens": result.tokens})
