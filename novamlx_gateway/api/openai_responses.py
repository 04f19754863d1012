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
from ..generation import Generation
from ..mcp_hub import SEP
from .blocks import Block, Blocks, Piece, Start
from .cloud_proxy import passthrough
from .common import arguments_text, parse_body, priority_of
from .generate_args import RESPONSES, GenerateArgs, start_generation
from .mcp_loop import collected_rounds, mcp_loop_of
from .openai_schema import response_format_of


class ReasoningIn(msgspec.Struct, kw_only=True):
    effort: str | None = None  # none | minimal | low | medium | high
    summary: str | None = None
    generate_summary: str | None = None


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
    reasoning: ReasoningIn | None = None
    include: list[str] | None = None
    priority: str | int | None = None
    speculative: bool | None = None  # false: no speculative drafts for this request
    ignore_eos: bool = False  # extension (as on chat completions): run to max_output_tokens (benchmarks)
    session_id: str | None = None  # keep this conversation's KV state across turns (or the x-session-id header)
    mcp: bool | list[str] | None = None  # offer the gateway's MCP servers' tools and run the calls (api/mcp_loop.py)
    mcp_max_rounds: int | None = None


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _parts_of(content: Any, where: str) -> list[m.Part]:
    if content is None or isinstance(content, str):
        return [m.Part("text", content or "")]
    if not isinstance(content, list):
        raise APIError(400, f"Invalid '{where}.content': expected a string or an array of content parts.",
                       "invalid_type", f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(part.get("text") or "", str):
                raise APIError(400, f"Invalid '{where}.content[{j}].text': expected a string.", "invalid_type",
                               f"{where}.content")
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
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise APIError(400, f"Invalid 'input[{i}]': expected an input item object.", "invalid_type", f"input[{i}]")
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
            name, ns, args = item.get("name"), item.get("namespace"), item.get("arguments")
            if not isinstance(name, str) or not name or not isinstance(ns, (str, type(None))):
                raise APIError(400, f"Invalid '{where}.name': a function_call needs a string name.", "invalid_value",
                               f"{where}.name")
            args = arguments_text(args, f"{where}.arguments")
            name = f"{ns}.{name}" if ns else name
            cid = item.get("call_id") or item.get("id")
            call = m.ToolCall(cid if isinstance(cid, str) else _new_id("call"), name, args)
            if out and out[-1].role == "assistant" and out[-1].tool_call_id is None:
                out[-1].tool_calls = (out[-1].tool_calls or []) + [call]
            else:
                out.append(m.ChatMessage("assistant", "", tool_calls=[call]))
        elif kind == "function_call_output":
            output, cid = item.get("output"), item.get("call_id")
            out.append(m.ChatMessage("tool", output if isinstance(output, str) else _text_of(output, where),
                                     tool_call_id=cid if isinstance(cid, str) else None))
        elif kind == "mcp_call":  # a call the gateway ran (mcp_loop.py): the call and its output
            server, name = item.get("server_label"), item.get("name")
            if not isinstance(server, str) or not isinstance(name, str):
                raise APIError(400, f"Invalid '{where}': an mcp_call needs server_label and name.", "invalid_value",
                               where)
            cid = item.get("id") if isinstance(item.get("id"), str) else _new_id("mcp")
            out.append(m.ChatMessage("assistant", "", tool_calls=[m.ToolCall(
                cid, f"{server}{SEP}{name}", arguments_text(item.get("arguments"), f"{where}.arguments"))]))
            result = item.get("output") if item.get("output") is not None else f"Error: {item.get('error')}"
            out.append(m.ChatMessage("tool", str(result), tool_call_id=cid))
        elif kind in ("reasoning", "mcp_list_tools"):
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
        kind = t.get("type") if isinstance(t, dict) else None
        if kind == "function":
            if not isinstance(t.get("name"), str) or not t["name"]:
                raise APIError(400, f"Invalid 'tools[{i}].name': a function tool needs a string name.",
                               "invalid_value", f"tools[{i}].name")
            out.append(_function(t["name"], t))
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
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else None,
                      "summary": req.reasoning.summary if req.reasoning else None},
        "store": req.store, "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": req.text or {"format": {"type": "text"}},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto", "tools": req.tools or [],
        "top_p": 1.0 if req.top_p is None else req.top_p, "truncation": req.truncation or "disabled",
        "usage": usage, "user": req.user, "metadata": req.metadata or {},
    }


def _usage(u: m.Usage) -> dict:
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def _mcp_item(call: m.ToolCallDelta, ran: dict | None, done: bool = True) -> dict:
    """A call the gateway runs (or would have, had the loop gone on) as the API's mcp_call item."""
    server, name = call.name.split(SEP, 1)
    status = ("failed" if ran["is_error"] else "completed") if ran else ("incomplete" if done else "in_progress")
    return {"type": "mcp_call", "id": "mcp_" + call.id.removeprefix("call_"), "server_label": server, "name": name,
            "arguments": call.arguments if done else "", "output": ran["result"] if ran and not ran["is_error"] else None,
            "error": ran["result"] if ran and ran["is_error"] else None, "status": status}


def _item(b: Block, namespaces: set[str], done: bool = True, loop=None) -> dict:
    """A block as its Responses output item; `done` False: as output_item.added shows it."""
    if b.kind == "thinking":
        return {"type": "reasoning", "id": f"rs_{b.id}", "summary": [],
                "content": [{"type": "reasoning_text", "text": b.text}] if done else [],
                "status": "completed" if done else "in_progress"}
    if b.kind == "text":
        return {"id": f"msg_{b.id}", "type": "message", "status": "completed" if done else "in_progress",
                "role": "assistant",
                "content": [{"type": "output_text", "text": b.text, "annotations": [], "logprobs": []}] if done else []}
    call = b.call
    if loop is not None and loop.owns(call.name):
        return _mcp_item(call, loop.ran(call.id), done)
    status = ("incomplete" if call.incomplete else "completed") if done else "in_progress"
    return {"type": "function_call", "id": "fc_" + call.id.removeprefix("call_"), "call_id": call.id,
            **_call_name(call.name, namespaces), "arguments": call.arguments if done else "", "status": status}


async def create_response(request: Request):
    req: ResponsesRequest = await parse_body(request, ResponsesRequest)
    app = request.app
    cloud = app.state.cloud.get(req.model)
    if cloud is not None and "responses" in cloud.native:
        return await passthrough(request, cloud, "/responses")
    store = app.state.responses
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
    tools = _tools(req.tools)
    namespaces = _namespaces(req.tools)
    choice = req.tool_choice
    named = choice.get("name") if isinstance(choice, dict) else None
    if isinstance(choice, dict) and not isinstance(named, (str, type(None))):
        raise APIError(400, "Invalid 'tool_choice.name': expected a string.", "invalid_type", "tool_choice.name")
    if isinstance(choice, str) and choice not in ("none", "auto", "required"):
        raise APIError(400, f"Invalid 'tool_choice': {choice!r}; use none, auto, required or a function.",
                       "invalid_value", "tool_choice")
    force = ("required" if choice == "required" else named) if tools else None
    loop, tools = mcp_loop_of(request, req.mcp, req.mcp_max_rounds, 1, tools)
    args = GenerateArgs(req.model, messages=chat, tools=tools, parse_tools=bool(tools) and choice != "none",
                        force_tool=force, temperature=req.temperature, top_p=req.top_p,
                        max_tokens=req.max_output_tokens,
                        response_format=response_format_of((req.text or {}).get("format"), "text.format"),
                        reasoning_effort=req.reasoning.effort if req.reasoning else None,
                        priority=priority_of(request, req.priority), speculative=req.speculative,
                        ignore_eos=req.ignore_eos, session=req.session_id)
    info, gen = await start_generation(request, args, RESPONSES)
    rid = _new_id("resp")
    created = int(time.time())

    def finish(out: list[dict], fin: m.Finished, usage: m.Usage) -> dict:
        incomplete = "max_output_tokens" if fin.finish_reason == "length" else None
        for o in out:
            if incomplete and o["type"] == "message":
                o["status"] = "incomplete"
        obj = _response(req, rid, info.id, created, "incomplete" if incomplete else "completed", out, _usage(usage),
                        incomplete)
        if req.store:
            store.save(rid, {"response": obj, "input_items": items,
                             "conversation": history + items + [{k: v for k, v in o.items() if k != "status"} for o in out]})
        return obj

    next_round = (lambda: start_generation(request, args, RESPONSES)) if loop is not None else None
    if req.stream:
        return StreamingResponse(_stream(gen, req, rid, info.id, created, finish, namespaces, loop, args.messages,
                                         next_round), media_type="text/event-stream", headers=sse.SSE_HEADERS)
    out: list[dict] = []
    async for blocks, fin, _ in collected_rounds(gen, loop, args.messages, next_round):
        out += [_item(b, namespaces, loop=loop) for b in blocks]  # (an mcp_call item shows its run's output)
    return JSONResponse(finish(out, fin, loop.total_usage() if loop is not None else fin.usage))


async def _stream(gen: Generation, req: ResponsesRequest, rid: str, model: str, created: int, finish,
                  namespaces: set[str], loop=None, messages=None, next_round=None):
    """The Responses event stream; with an MCP loop, every round's items at continuing output
    indexes, the calls the gateway runs as mcp_call items (arguments, then completed or failed
    with their output once run), in one response."""
    seq, offset = 0, 0

    def ev(kind: str, **fields):
        nonlocal seq
        frame = sse.event(kind, {"type": kind, "sequence_number": seq, **fields})
        seq += 1
        return frame

    def mcp(b) -> bool:
        return b.kind == "tool_call" and loop is not None and loop.owns(b.call.name)

    def frames(e):
        """One block event as Responses events (output_index: the block's place in the whole response)."""
        b = e.block
        at = {"output_index": b.index + offset}
        if b.kind == "text":
            where = {"item_id": f"msg_{b.id}", **at, "content_index": 0}
            if isinstance(e, Start):
                yield ev("response.output_item.added", **at, item=_item(b, namespaces, done=False))
                yield ev("response.content_part.added", **where,
                         part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
            elif isinstance(e, Piece):
                yield ev("response.output_text.delta", **where, delta=e.text, logprobs=[])
            else:
                yield ev("response.output_text.done", **where, text=b.text, logprobs=[])
                yield ev("response.content_part.done", **where,
                         part={"type": "output_text", "text": b.text, "annotations": [], "logprobs": []})
                yield ev("response.output_item.done", **at, item=_item(b, namespaces))
        elif b.kind == "thinking":
            where = {"item_id": f"rs_{b.id}", **at, "content_index": 0}
            if isinstance(e, Start):
                yield ev("response.output_item.added", **at, item=_item(b, namespaces, done=False))
            elif isinstance(e, Piece):
                yield ev("response.reasoning_text.delta", **where, delta=e.text)
            else:
                yield ev("response.reasoning_text.done", **where, text=b.text)
                yield ev("response.output_item.done", **at, item=_item(b, namespaces))
        elif mcp(b):  # its item is done once the call has run (after the round)
            item_id = "mcp_" + b.call.id.removeprefix("call_")
            if isinstance(e, Start):
                yield ev("response.output_item.added", **at, item=_item(b, namespaces, done=False, loop=loop))
                yield ev("response.mcp_call.in_progress", item_id=item_id, **at)
            elif isinstance(e, Piece):
                yield ev("response.mcp_call_arguments.delta", item_id=item_id, **at, delta=e.text)
            else:
                yield ev("response.mcp_call_arguments.done", item_id=item_id, **at, arguments=b.text)
        else:
            item_id = "fc_" + b.call.id.removeprefix("call_")
            if isinstance(e, Start):
                yield ev("response.output_item.added", **at, item=_item(b, namespaces, done=False))
            elif isinstance(e, Piece):
                yield ev("response.function_call_arguments.delta", item_id=item_id, **at, delta=e.text)
            else:
                yield ev("response.function_call_arguments.done", item_id=item_id, **at, arguments=b.text,
                         name=b.call.name)
                yield ev("response.output_item.done", **at, item=_item(b, namespaces))

    def ran(b):
        """An MCP call's end: completed or failed with its output (or left incomplete)."""
        item = _item(b, namespaces, loop=loop)
        at = {"output_index": b.index + offset}
        if item["status"] in ("completed", "failed"):
            yield ev(f"response.mcp_call.{item['status']}", item_id=item["id"], **at)
        yield ev("response.output_item.done", **at, item=item)

    def failed(code: str | None, message: str):
        obj = _response(req, rid, model, created, "failed", [], None,
                        error={"code": code or "server_error", "message": message})
        return ev("response.failed", response=obj)

    try:
        start = _response(req, rid, model, created, "in_progress", [], None)
        yield ev("response.created", response=start)
        yield ev("response.in_progress", response=start)
        out: list[dict] = []
        while True:
            blocks, fin = Blocks(), None
            async for _, e in gen.events():
                if isinstance(e, m.Delta):
                    for be in blocks.feed(e):
                        for frame in frames(be):
                            yield frame
                elif isinstance(e, m.Finished):
                    fin = e
                    for be in blocks.finish():
                        for frame in frames(be):
                            yield frame
                elif isinstance(e, m.Error):
                    raise gen.error(e)
            usage, going = fin.usage, False
            if loop is not None:
                calls = [b.call for b in blocks.blocks if b.kind == "tool_call"]
                going = loop.next_round(usage, calls, fin.finish_reason)
                if going:
                    await loop.run("".join(b.text for b in blocks.blocks if b.kind == "text"), calls, messages)
                else:
                    usage = loop.total_usage()
                for b in blocks.blocks:
                    if mcp(b):
                        for frame in ran(b):
                            yield frame
            out += [_item(b, namespaces, loop=loop) for b in blocks.blocks]
            offset += len(blocks.blocks)
            if not going:
                break
            gen.abort()
            _, gen = await next_round()
        obj = finish(out, fin, usage)
        yield ev("response.incomplete" if obj["status"] == "incomplete" else "response.completed", response=obj)
    except APIError as e:
        yield failed(e.code, e.message)
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
