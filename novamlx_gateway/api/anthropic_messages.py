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
from ..mcp_hub import SEP
from .blocks import Block, Blocks, Piece, Start, close_json
from .cloud_proxy import passthrough
from .common import parse_body, priority_of
from .generate_args import MESSAGES, GenerateArgs, start_generation
from .limits import check_prompt_text, check_tools, message_texts
from .mcp_loop import collected_rounds, mcp_loop_of


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


class ThinkingIn(msgspec.Struct, kw_only=True):
    type: str  # enabled | disabled | adaptive
    budget_tokens: int | None = None


class ToolChoiceIn(msgspec.Struct, kw_only=True):
    type: str  # auto | any | tool | none
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


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
    tool_choice: ToolChoiceIn | None = None
    thinking: ThinkingIn | None = None
    priority: str | int | None = None
    speculative: bool | None = None  # false: no speculative drafts for this request
    ignore_eos: bool = False  # extension (as on chat completions): run to max_tokens (benchmarks)
    session_id: str | None = None  # keep this conversation's KV state across turns (or the x-session-id header)
    mcp: bool | list[str] | None = None  # offer the MCP servers' tools and run the calls (api/mcp_loop.py)
    mcp_max_rounds: int | None = None


class CountRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: list[MessageIn]
    system: str | list[ContentBlock] | None = None
    tools: list[ToolIn] | None = None
    thinking: ThinkingIn | None = None
    tool_choice: ToolChoiceIn | None = None


def _block_text(content, where: str = "content") -> str:
    """The text of a string or a list of blocks (a tool result's content, the system prompt)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise APIError(400, f"{where}: Input should be a valid string or a list of content blocks", None, where)
    out = []
    for b in content:
        text = b.get("text", "") if isinstance(b, dict) else getattr(b, "text", None) if not isinstance(b, str) else b
        if not isinstance(text, str):
            if isinstance(b, dict) and b.get("type") not in (None, "text"):
                continue  # images inside a tool result are not replayed as text
            raise APIError(400, f"{where}: each block's text must be a string", None, where)
        out.append(text)
    return "".join(out)


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
                result = _block_text(b.content, f"messages.{i}.content.{j}.content")
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


def _input(call: m.ToolCallDelta) -> dict:
    """A tool_use block's input: the call's JSON arguments (as far as they got, for a cut call)."""
    if call.incomplete:
        return close_json(call.arguments)
    try:
        value = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return close_json(call.arguments)
    return value if isinstance(value, dict) else {"value": value}


def _tool_id(call_id: str) -> str:
    return call_id if call_id.startswith("toolu_") else "toolu_" + call_id.removeprefix("call_")


def _tool_use(call: m.ToolCallDelta, loop=None, with_input: bool = True) -> dict:
    """A tool_use block; a call to an MCP tool the gateway runs is an mcp_tool_use block, as
    Anthropic's MCP connector writes it (the tool's own name and its server's)."""
    block = {"type": "tool_use", "id": _tool_id(call.id), "name": call.name}
    if loop is not None and loop.owns(call.name):
        server, tool = call.name.split(SEP, 1)
        block = {"type": "mcp_tool_use", "id": _tool_id(call.id), "name": tool, "server_name": server}
    block["input"] = _input(call) if with_input else {}
    return block


def _mcp_result(r: dict) -> dict:
    return {"type": "mcp_tool_result", "tool_use_id": _tool_id(r["id"]), "is_error": r["is_error"],
            "content": [{"type": "text", "text": r["result"]}]}


def _content(block: Block, loop=None) -> dict:
    if block.kind == "thinking":
        return {"type": "thinking", "thinking": block.text, "signature": ""}
    if block.kind == "tool_call":
        return _tool_use(block.call, loop)
    return {"type": "text", "text": block.text}


def _usage(prompt: int, cached: int, output: int) -> dict:
    """Anthropic's usage: input_tokens are the tokens not read from the cache."""
    return {"input_tokens": prompt - cached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
            "output_tokens": output}


def _tool_choice(choice: ToolChoiceIn | None, tools) -> tuple[bool, str | None]:
    """(parse tool calls, the call to force)."""
    if choice is None:
        return bool(tools), None
    if choice.type not in ("auto", "any", "tool", "none"):
        raise APIError(400, f"tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'", None,
                       "tool_choice.type")
    if choice.type == "tool" and not choice.name:
        raise APIError(400, "tool_choice.name: Field required", None, "tool_choice.name")
    if choice.type in ("any", "tool") and not tools:
        raise APIError(400, "tool_choice: a tool is required but 'tools' is empty", None, "tool_choice")
    force = {"any": "required", "tool": choice.name}.get(choice.type)
    return bool(tools) and choice.type != "none", force


def _thinking(t: ThinkingIn | None) -> dict:
    if t is None:
        return {}
    if t.type not in ("enabled", "disabled", "adaptive"):
        raise APIError(400, "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'", None, "thinking.type")
    if t.type == "enabled" and t.budget_tokens is None:
        raise APIError(400, "thinking.enabled.budget_tokens: Field required", None, "thinking.budget_tokens")
    return {"thinking_budget": t.budget_tokens if t.type == "enabled" else None,
            "enable_thinking": {"enabled": True, "disabled": False}.get(t.type)}


async def messages(request: Request):
    req: MessagesRequest = await parse_body(request, MessagesRequest)
    cloud = request.app.state.cloud.get(req.model)
    if cloud is not None and "messages" in cloud.native:
        return await passthrough(request, cloud, "/messages")
    if req.max_tokens is None:
        raise APIError(400, "max_tokens: Field required", None, "max_tokens")
    chat, tools = to_protocol(req)
    parse, force = _tool_choice(req.tool_choice, tools)
    loop, tools = mcp_loop_of(request, req.mcp, req.mcp_max_rounds, 1, tools)
    args = GenerateArgs(req.model, messages=chat, tools=tools, parse_tools=parse or loop is not None, force_tool=force,
                        temperature=req.temperature, top_p=req.top_p,
                        top_k=req.top_k if req.top_k is None else max(req.top_k, 0), max_tokens=req.max_tokens,
                        stop=list(req.stop_sequences or []), priority=priority_of(request, req.priority),
                        speculative=req.speculative, ignore_eos=req.ignore_eos, session=req.session_id,
                        **_thinking(req.thinking))
    rid = f"msg_{uuid.uuid4().hex[:24]}"
    info, gen = await start_generation(request, args, MESSAGES)
    next_round = (lambda: start_generation(request, args, MESSAGES)) if loop is not None else None
    if req.stream:
        return StreamingResponse(_stream(gen, rid, info.id, loop, args.messages, next_round),
                                 media_type="text/event-stream", headers=sse.SSE_HEADERS)
    content = []
    async for blocks, fin, results in collected_rounds(gen, loop, args.messages, next_round):
        content += [_content(b, loop) for b in blocks] + [_mcp_result(r) for r in results]
    u = loop.total_usage() if loop is not None else fin.usage
    return JSONResponse({
        "id": rid, "type": "message", "role": "assistant", "model": info.id, "content": content,
        "stop_reason": _stop_reason(fin.finish_reason, fin.stop), "stop_sequence": fin.stop,
        "usage": _usage(u.prompt_tokens, u.cached_tokens, u.completion_tokens),
    })



def _events(ev, offset: int = 0, loop=None) -> list[bytes]:
    """One block event as Anthropic's content_block_* frames (offset: blocks of earlier MCP rounds)."""
    b = ev.block
    index = b.index + offset
    if isinstance(ev, Start):
        if b.kind == "tool_call":
            start = _tool_use(b.call, loop, with_input=False)
        elif b.kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            start = {"type": "text", "text": ""}
        return [sse.event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})]
    if isinstance(ev, Piece):
        if b.kind == "text":
            delta = {"type": "text_delta", "text": ev.text}
        elif b.kind == "thinking":
            delta = {"type": "thinking_delta", "thinking": ev.text}
        else:
            delta = {"type": "input_json_delta", "partial_json": json.dumps(_input(b.call))}
        return [sse.event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})]
    return [sse.event("content_block_stop", {"type": "content_block_stop", "index": index})]


async def _stream(gen: Generation, rid: str, model: str, loop=None, messages=None, next_round=None):
    """Anthropic's event stream; with an MCP loop, each round's blocks (mcp_tool_use for the calls
    the gateway runs), an mcp_tool_result block per result, then the next round's, in one message."""
    cid = gen.cmds[0].id
    offset = 0
    try:
        yield sse.event("message_start", {"type": "message_start", "message": {
            "id": rid, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": _usage(gen.prompt_counts.get(cid, 0), gen.cached_tokens.get(cid, 0), 1)}})
        yield sse.event("ping", {"type": "ping"})
        while True:
            blocks, fin = Blocks(), None
            async for _, ev in gen.events():
                if isinstance(ev, m.Delta):
                    for e in blocks.feed(ev):
                        for frame in _events(e, offset, loop):
                            yield frame
                elif isinstance(ev, m.Finished):
                    fin = ev
                    for e in blocks.finish():
                        for frame in _events(e, offset, loop):
                            yield frame
                elif isinstance(ev, m.Error):
                    raise gen.error(ev)
            u = fin.usage
            offset += len(blocks.blocks)
            if loop is None:
                break
            calls = [b.call for b in blocks.blocks if b.kind == "tool_call"]
            if not loop.next_round(u, calls, fin.finish_reason):
                u = loop.total_usage()
                break
            text = "".join(b.text for b in blocks.blocks if b.kind == "text")
            for r in await loop.run(text, calls, messages):
                yield sse.event("content_block_start", {"type": "content_block_start", "index": offset,
                                                        "content_block": _mcp_result(r)})
                yield sse.event("content_block_stop", {"type": "content_block_stop", "index": offset})
                offset += 1
            gen.abort()
            _, gen = await next_round()
        yield sse.event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(fin.finish_reason, fin.stop), "stop_sequence": fin.stop},
            "usage": _usage(u.prompt_tokens, u.cached_tokens, u.completion_tokens)})
        yield sse.event("message_stop", {"type": "message_stop"})
    except APIError as e:
        yield sse.event("error", e.anthropic()[1])
    finally:
        gen.abort()


async def count_tokens(request: Request):
    req: CountRequest = await parse_body(request, CountRequest)
    worker = request.app.state.worker
    info = model_or_404(worker, req.model)
    chat, tools = to_protocol(req)
    check_prompt_text(message_texts(chat), request.app.state.config.max_prompt_mb, "messages")
    check_tools(tools)
    await images.resolve(chat, request.app.state.config, info)
    result = await worker.call(m.CountTokens(f"count_{uuid.uuid4().hex[:16]}", info.id, messages=chat, tools=tools))
    return JSONResponse({"input_tokens": result.tokens})
