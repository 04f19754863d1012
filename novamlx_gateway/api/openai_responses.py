"""The OpenAI Responses API: POST /v1/responses, GET/DELETE /v1/responses/{id},
GET /v1/responses/{id}/input_items.

Streams carry every event with its sequence_number, in the documented order:
response.created, response.in_progress, output_item.added, content_part.added,
output_text.delta*, output_text.done, content_part.done, output_item.done, then
response.completed (or response.incomplete / response.failed).
"""
from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from protocol import messages as m

from .. import images, sse
from ..errors import APIError
from ..generation import Generation, model_or_404
from .openai_schema import parse_body, priority_of, response_format_of


class ResponsesRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[dict] | None = None
    instructions: str | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    text: dict | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict | None = None
    parallel_tool_calls: bool | None = None
    truncation: str | None = None
    user: str | None = None
    reasoning: dict | None = None
    include: list[str] | None = None
    priority: str | int | None = None


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _parts_of(content: Any, where: str) -> list[m.Part]:
    if content is None or isinstance(content, str):
        return [m.Part("text", content or "")]
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append(m.Part("text", part.get("text") or ""))
        elif kind == "input_image" and isinstance(part.get("image_url"), str) and part["image_url"]:
            parts.append(m.Part("image", source=part["image_url"]))
        elif kind in ("input_image", "input_file"):
            raise APIError(400, f"{where}.content[{j}]: {kind} needs an image_url (data URI or URL); file ids and "
                                "files are not supported.", "unsupported_input", f"{where}.content")
        else:
            raise APIError(400, f"{where}.content[{j}]: unsupported content type {kind!r}.", "invalid_value",
                           f"{where}.content")
    return parts


def _text_of(content: Any, where: str) -> str:
    parts = _parts_of(content, where)
    if any(p.type == "image" for p in parts):
        raise APIError(400, f"{where}: images are only accepted in message input.", "unsupported_input", where)
    return "".join(p.text or "" for p in parts)


def normalize_input(value: str | list[dict] | None) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    return [dict(item, type=item.get("type", "message")) for item in value]


def to_protocol(items: list[dict], instructions: str | None) -> list[m.ChatMessage]:
    out: list[m.ChatMessage] = [m.ChatMessage("system", instructions)] if instructions else []
    for i, item in enumerate(items):
        kind = item.get("type")
        where = f"input[{i}]"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise APIError(400, f"{where}.role: invalid role {role!r}.", "invalid_value", f"{where}.role")
            out.append(images.message("system" if role == "developer" else role, _parts_of(item.get("content"), where)))
        elif kind == "function_call":
            name = item.get("name") or ""
            if item.get("namespace"):
                name = f"{item['namespace']}.{name}"
            call = m.ToolCall(item.get("call_id") or item.get("id") or _new_id("call"), name,
                              item.get("arguments") or "{}")
            if out and out[-1].role == "assistant" and out[-1].tool_call_id is None:
                out[-1].tool_calls = (out[-1].tool_calls or []) + [call]
            else:
                out.append(m.ChatMessage("assistant", "", tool_calls=[call]))
        elif kind == "function_call_output":
            output = item.get("output")
            out.append(m.ChatMessage("tool", output if isinstance(output, str) else _text_of(output, where),
                                     tool_call_id=item.get("call_id")))
        elif kind == "reasoning":
            continue
        else:
            raise APIError(400, f"{where}.type: unsupported input item type {kind!r}.", "invalid_value", f"{where}.type")
    return out


# Tools not offered to a local model: those OpenAI runs on its side (a local server has
# nothing to run them with; Codex sends web_search by default), and freeform `custom` tools,
# whose grammar-shaped input we do not serve.
NOT_OFFERED = {"web_search", "web_search_preview", "file_search", "code_interpreter", "computer_use_preview",
                "image_generation", "mcp", "local_shell", "tool_search", "custom"}


def _function(name: str, t: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": t.get("description") or "",
                                             "parameters": t.get("parameters") or {}}}


def _tools(tools: list[dict] | None) -> list[dict] | None:
    """Function tools, and the functions inside `namespace` tools (offered as `namespace.name`)."""
    out = []
    for i, t in enumerate(tools or []):
        kind = t.get("type")
        if kind == "function":
            out.append(_function(t.get("name"), t))
        elif kind == "namespace":
            out += [_function(f"{t.get('name')}.{f.get('name')}", f) for f in t.get("tools") or []
                    if f.get("type") == "function"]
        elif kind not in NOT_OFFERED:
            raise APIError(400, f"tools[{i}]: unsupported tool type {kind!r} (function and namespace tools are "
                                "served; hosted and custom tools are not offered to a local model).", "invalid_value", "tools")
    return out or None


def _namespaces(tools: list[dict] | None) -> set[str]:
    return {t.get("name") for t in tools or [] if t.get("type") == "namespace"}


def _call_name(name: str, namespaces: set[str]) -> dict:
    """A call's wire name: `namespace.fn` from a namespace tool is name fn in namespace."""
    ns, dot, fn = name.partition(".")
    return {"name": fn, "namespace": ns} if dot and ns in namespaces else {"name": name}


def _response(req: ResponsesRequest, rid: str, model: str, created: int, status: str, output: list[dict],
              usage: dict | None, incomplete: str | None = None, error: dict | None = None) -> dict:
    return {
        "id": rid, "object": "response", "created_at": created, "status": status, "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "model": model, "output": output,
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id, "reasoning": {"effort": None, "summary": None},
        "store": req.store, "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": req.text or {"format": {"type": "text"}},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto", "tools": req.tools or [],
        "top_p": 1.0 if req.top_p is None else req.top_p, "truncation": req.truncation or "disabled",
        "usage": usage, "user": req.user, "metadata": req.metadata or {},
    }


def _usage(gen: Generation) -> dict:
    u = gen.usage()
    return {"input_tokens": u["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": u["prompt_tokens_details"]["cached_tokens"], "cache_write_tokens": 0},
            "output_tokens": u["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u["total_tokens"]}


def _message_item(item_id: str, text: str, status: str) -> dict:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status != "in_progress" else []
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


async def create_response(request: Request):
    req: ResponsesRequest = await parse_body(request, ResponsesRequest)
    app = request.app
    worker, cfg, store = app.state.worker, app.state.config, app.state.responses
    info = model_or_404(worker, req.model)
    if req.max_output_tokens is not None and req.max_output_tokens < 1:
        raise APIError(400, f"Invalid 'max_output_tokens': {req.max_output_tokens}; expected a value >= 1.",
                       "integer_below_min_value", "max_output_tokens")
    history: list[dict] = []
    if req.previous_response_id:
        prev = store.get(req.previous_response_id)
        if prev is None:
            raise APIError(404, f"Previous response with id '{req.previous_response_id}' not found.",
                           "previous_response_not_found", "previous_response_id")
        history = prev["conversation"]
    items = normalize_input(req.input)
    if not items and not history:
        raise APIError(400, "Missing required parameter: 'input'.", "missing_required_parameter", "input")
    chat = to_protocol(history + items, req.instructions)
    if not chat:
        raise APIError(400, "Invalid 'input': nothing to respond to.", "invalid_value", "input")
    await images.resolve(chat, request.app.state.config, info)
    sampling = m.Sampling(temperature=1.0 if req.temperature is None else req.temperature,
                          top_p=1.0 if req.top_p is None else req.top_p, max_tokens=req.max_output_tokens,
                          response_format=response_format_of((req.text or {}).get("format"), "text.format"))
    rid = _new_id("resp")
    tools = _tools(req.tools)
    namespaces = _namespaces(req.tools)
    choice = req.tool_choice
    force = ("required" if choice == "required" else choice.get("name") if isinstance(choice, dict) else None) \
        if tools else None
    cmd = m.Generate(rid, info.id, sampling, messages=chat, tools=tools, parse_tools=bool(tools) and choice != "none",
                     force_tool=force, priority=priority_of(request, req.priority),
                     fit_max_tokens=True)  # max_output_tokens is an upper bound
    gen = Generation(worker, [cmd], cfg.request_timeout, app.state.admission)
    await gen.start()
    created = int(time.time())
    item_id = _new_id("msg")
    reasoning_id = _new_id("rs")

    def finish(text: str, reason: str | None, calls: list[m.ToolCallDelta], thought: str = "") -> dict:
        incomplete = "max_output_tokens" if reason == "length" else None
        out = [_reasoning_item(reasoning_id, thought)] if thought else []
        out += [_message_item(item_id, text, "incomplete" if incomplete else "completed")] if text or not calls else []
        out += [_function_item(c, namespaces) for c in calls]
        obj = _response(req, rid, info.id, created, "incomplete" if incomplete else "completed", out, _usage(gen),
                        incomplete)
        if req.store:
            store.save(rid, {"response": obj, "input_items": items,
                             "conversation": history + items + [{k: v for k, v in o.items() if k != "status"} for o in out]})
        return obj

    if req.stream:
        return StreamingResponse(_stream(gen, req, rid, info.id, created, item_id, reasoning_id, finish, namespaces),
                                 media_type="text/event-stream", headers=sse.SSE_HEADERS)
    (c,) = await gen.collect()
    return JSONResponse(finish("".join(c.text), c.finish_reason, c.tool_calls, "".join(c.reasoning)))


def _reasoning_item(rid: str, text: str) -> dict:
    return {"type": "reasoning", "id": rid, "summary": [], "content": [{"type": "reasoning_text", "text": text}],
            "status": "completed"}


def _function_item(call: m.ToolCallDelta, namespaces: set[str], status: str = "completed",
                   arguments: str | None = None) -> dict:
    return {"type": "function_call", "id": "fc_" + call.id.removeprefix("call_"), "call_id": call.id,
            **_call_name(call.name, namespaces), "arguments": call.arguments if arguments is None else arguments,
            "status": status}


async def _stream(gen: Generation, req: ResponsesRequest, rid: str, model: str, created: int, item_id: str,
                  reasoning_id: str, finish, namespaces: set[str]):
    seq = 0

    def ev(kind: str, **fields):
        nonlocal seq
        frame = sse.event(kind, {"type": kind, "sequence_number": seq, **fields})
        seq += 1
        return frame

    text: list[str] = []
    thought: list[str] = []
    calls: list[m.ToolCallDelta] = []
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    message_open = reasoning_open = False
    items = 0  # output items opened so far

    def open_message():
        nonlocal items
        where["output_index"] = items
        items += 1
        yield ev("response.output_item.added", output_index=where["output_index"],
                 item=_message_item(item_id, "", "in_progress"))
        yield ev("response.content_part.added", **where,
                 part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})

    def close_message(item: dict):
        full = "".join(text)
        yield ev("response.output_text.done", **where, text=full, logprobs=[])
        yield ev("response.content_part.done", **where,
                 part={"type": "output_text", "text": full, "annotations": [], "logprobs": []})
        yield ev("response.output_item.done", output_index=where["output_index"], item=item)

    def close_reasoning():
        full = "".join(thought)
        yield ev("response.reasoning_text.done", item_id=reasoning_id, output_index=0, content_index=0, text=full)
        yield ev("response.output_item.done", output_index=0, item=_reasoning_item(reasoning_id, full))

    try:
        start = _response(req, rid, model, created, "in_progress", [], None)
        yield ev("response.created", response=start)
        yield ev("response.in_progress", response=start)
        async for _, e in gen.events():
            if isinstance(e, m.Delta):
                if e.reasoning:
                    if not reasoning_open:
                        items += 1
                        reasoning_open = True
                        yield ev("response.output_item.added", output_index=0,
                                 item={**_reasoning_item(reasoning_id, ""), "content": [], "status": "in_progress"})
                    thought.append(e.reasoning)
                    yield ev("response.reasoning_text.delta", item_id=reasoning_id, output_index=0, content_index=0,
                             delta=e.reasoning)
                if reasoning_open and (e.text or e.tool_calls):
                    for frame in close_reasoning():
                        yield frame
                    reasoning_open = False
                if e.text:
                    if not message_open:
                        for frame in open_message():
                            yield frame
                        message_open = True
                    text.append(e.text)
                    yield ev("response.output_text.delta", **where, delta=e.text, logprobs=[])
                for call in e.tool_calls or []:
                    calls.append(call)
                    index = items
                    items += 1
                    item = _function_item(call, namespaces, "in_progress", "")
                    yield ev("response.output_item.added", output_index=index, item=item)
                    yield ev("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                             delta=call.arguments)
                    yield ev("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                             arguments=call.arguments, name=call.name)
                    yield ev("response.output_item.done", output_index=index, item=_function_item(call, namespaces))
            elif isinstance(e, m.Finished):
                if reasoning_open:
                    for frame in close_reasoning():
                        yield frame
                if not message_open and not calls:  # an empty answer is still one message
                    for frame in open_message():
                        yield frame
                    message_open = True
                obj = finish("".join(text), e.finish_reason, calls, "".join(thought))
                if message_open:
                    for frame in close_message(obj["output"][where["output_index"]]):
                        yield frame
                yield ev("response.incomplete" if obj["status"] == "incomplete" else "response.completed", response=obj)
            elif isinstance(e, m.Error):
                failed = _response(req, rid, model, created, "failed", [], None,
                                   error={"code": e.code or "server_error", "message": e.message})
                yield ev("response.failed", response=failed)
                return
    except APIError as e:
        failed = _response(req, rid, model, created, "failed", [], None, error={"code": e.code or "server_error",
                                                                                "message": e.message})
        yield ev("response.failed", response=failed)
    finally:
        gen.abort()


async def get_response(request: Request):
    rec = request.app.state.responses.get(request.path_params["id"])
    if rec is None:
        raise APIError(404, f"No response found with id '{request.path_params['id']}'.", "not_found", "response_id")
    return JSONResponse(rec["response"])


async def delete_response(request: Request):
    rid = request.path_params["id"]
    if not request.app.state.responses.delete(rid):
        raise APIError(404, f"No response found with id '{rid}'.", "not_found", "response_id")
    return JSONResponse({"id": rid, "object": "response.deleted", "deleted": True})


async def input_items(request: Request):
    rec = request.app.state.responses.get(request.path_params["id"])
    if rec is None:
        raise APIError(404, f"No response found with id '{request.path_params['id']}'.", "not_found", "response_id")
    data = []
    for item in rec["input_items"]:
        item = dict(item)
        item.setdefault("id", _new_id("msg"))
        if item.get("type") == "message":
            item.setdefault("status", "completed")
            if isinstance(item.get("content"), str):
                item["content"] = [{"type": "input_text", "text": item["content"]}]
        data.append(item)
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": False})
