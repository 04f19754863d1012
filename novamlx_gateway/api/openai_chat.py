"""POST /v1/chat/completions: OpenAI chat wire format <-> protocol."""
from __future__ import annotations


from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from protocol import messages as m

from .. import images, sse
from .cloud_proxy import passthrough
from ..errors import APIError
from ..generation import Generation, usage_dict
from .common import arguments_text, parse_body, priority_of
from .generate_args import CHAT, GenerateArgs, start_generation
from .mcp_loop import mcp_loop_of
from .openai_schema import ChatMessageIn, ChatRequest, check_stream_options, response_format_of, sampling_fields

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _parts(msg: ChatMessageIn, i: int) -> list[m.Part]:
    if msg.content is None or isinstance(msg.content, str):
        return [m.Part("text", msg.content or "")]
    parts = []
    for part in msg.content:
        if part.type in ("text", "input_text", "output_text"):
            parts.append(m.Part("text", part.text or ""))
        elif part.type in ("image_url", "input_image"):
            url = part.image_url.get("url") if isinstance(part.image_url, dict) else part.image_url
            if not isinstance(url, str) or not url:
                raise APIError(400, f"messages[{i}].content: an image_url part needs image_url.url.", "invalid_value",
                               f"messages[{i}].content")
            parts.append(m.Part("image", source=url))
        else:
            raise APIError(400, f"messages[{i}].content has an unsupported part type {part.type!r}.",
                           "invalid_value", f"messages[{i}].content")
    return parts


def _tool_call(c, i: int, j: int) -> m.ToolCall:
    """An assistant turn's tool call: a string name; arguments as JSON text (an object is encoded)."""
    where = f"messages[{i}].tool_calls[{j}]"
    fn = c.get("function") if isinstance(c, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise APIError(400, f"Invalid '{where}': expected {{\"function\": {{\"name\": string, \"arguments\": "
                            "string}}.", "invalid_value", where)
    args = arguments_text(fn.get("arguments"), f"{where}.function.arguments")
    cid = c.get("id")
    return m.ToolCall(cid if isinstance(cid, str) and cid else f"call_{i}_{j}", fn["name"], args)


def to_messages(req: ChatRequest) -> list[m.ChatMessage]:
    if not req.messages:
        raise APIError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                       "empty_array", "messages")
    out = []
    for i, msg in enumerate(req.messages):
        if msg.role not in ROLES:
            raise APIError(400, f"Invalid value: '{msg.role}'. Supported values are: {', '.join(repr(r) for r in ROLES)}.",
                           "invalid_value", f"messages[{i}].role")
        role = {"developer": "system", "function": "tool"}.get(msg.role, msg.role)
        calls = None
        if msg.tool_calls:
            calls = [_tool_call(c, i, j) for j, c in enumerate(msg.tool_calls)]
        out.append(images.message(role, _parts(msg, i), name=msg.name, tool_calls=calls,
                                  tool_call_id=msg.tool_call_id))
    return out


def tools_of(req: ChatRequest) -> tuple[list[dict] | None, bool, str | None]:
    """(tool schemas for the template, whether to parse tool calls, the call to force if any)."""
    tools = req.tools or None
    for i, t in enumerate(tools or []):
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict) \
                or not isinstance(t["function"].get("name"), str) or not t["function"]["name"]:
            raise APIError(400, f"Invalid 'tools[{i}]': expected {{\"type\": \"function\", \"function\": "
                                "{\"name\": ..., \"parameters\": {...}}}.", "invalid_value", f"tools[{i}]")
    choice = req.tool_choice
    force = None
    if isinstance(choice, dict):
        fn = choice.get("function")
        force = (fn.get("name") if isinstance(fn, dict) else None) or choice.get("name")
        if not isinstance(force, str) or not force:
            raise APIError(400, "Invalid 'tool_choice': name a function as {\"type\": \"function\", "
                                "\"function\": {\"name\": ...}}.", "invalid_value", "tool_choice")
    elif choice == "required":
        force = "required"
    elif choice not in (None, "none", "auto"):
        raise APIError(400, f"Invalid 'tool_choice': {choice!r}.", "invalid_value", "tool_choice")
    if force and not tools:
        raise APIError(400, "Invalid 'tool_choice': it asks for a tool call but 'tools' is empty.", "invalid_value",
                       "tool_choice")
    return tools, bool(tools) and choice != "none", force


def tool_calls_obj(calls: list[m.ToolCallDelta]) -> list[dict]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def _logprobs_obj(entries: list[m.TokenLogprob]) -> dict:
    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": e.bytes,
                         "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in e.top]}
                        for e in entries], "refusal": None}


async def chat_completions(request: Request):
    req: ChatRequest = await parse_body(request, ChatRequest)
    if req.model in request.app.state.cloud:
        return await passthrough(request, request.app.state.cloud[req.model], "/chat/completions")
    check_stream_options(req)
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
                       "invalid_value", "top_logprobs")
    tools, parse_tools, force = tools_of(req)
    loop, tools = mcp_loop_of(request, req.mcp, req.mcp_max_rounds, 1 if req.n is None else req.n, tools)
    args = GenerateArgs(
        req.model, messages=to_messages(req), tools=tools, parse_tools=parse_tools or loop is not None,
        force_tool=force,
        **sampling_fields(req),
        max_tokens=req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens,
        logprobs=bool(req.logprobs), top_logprobs=req.top_logprobs or 0,
        response_format=response_format_of(req.response_format), reasoning_effort=req.reasoning_effort,
        thinking_budget=req.thinking_budget, enable_thinking=req.enable_thinking,
        template_kwargs=req.chat_template_kwargs, priority=priority_of(request, req.priority))
    base = Generation.new_id()
    info, gen = await start_generation(request, args, CHAT, base)
    field = request.app.state.config.reasoning_field
    rid = f"chatcmpl-{base}"
    fingerprint = f"fp_novamlx_{info.id[:16]}"
    next_round = (lambda: start_generation(request, args, CHAT)) if loop is not None else None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_stream(gen, rid, info.id, fingerprint, include_usage, bool(req.logprobs), field,
                                         loop, args.messages, next_round),
                                 media_type="text/event-stream", headers=sse.SSE_HEADERS)
    choices = await gen.collect()
    usage = gen.usage()
    while loop is not None:  # MCP rounds: run the calls, generate again
        c = choices[0]
        if not loop.next_round(gen.totals(), c.tool_calls, c.finish_reason):
            usage = usage_dict(loop.total_usage())
            break
        await loop.run("".join(c.text), c.tool_calls, args.messages)
        _, gen = await next_round()
        choices = await gen.collect()
    body = {
        "id": rid, "object": "chat.completion", "created": gen.created, "model": info.id,
        "system_fingerprint": fingerprint,
        "choices": [{"index": i, "message": _message(c, field),
                     "logprobs": _logprobs_obj(c.logprobs) if req.logprobs else None,
                     "finish_reason": finish_reason(c.finish_reason)} for i, c in enumerate(choices)],
        "usage": usage,
    }
    if loop is not None:
        body["mcp"] = loop.summary()
    return JSONResponse(body)


def _message(c, field: str) -> dict:
    msg = {"role": "assistant", "content": "".join(c.text) or (None if c.tool_calls else ""), "refusal": None,
           "annotations": []}
    if c.reasoning:
        msg[field] = "".join(c.reasoning)
    if c.tool_calls:
        msg["tool_calls"] = tool_calls_obj(c.tool_calls)
    return msg


def finish_reason(reason: str | None) -> str:
    """OpenAI's finish_reason (chat and completions): a cut reply is "length", tool calls included."""
    return reason if reason in ("length", "tool_calls") else "stop"


async def _round(gen: Generation, chunk, logprobs: bool, field: str, ends: dict | None):
    """One generation's chunks: text, reasoning and tool-call deltas, and each choice's finish
    chunk as it ends; with `ends`, the finish reasons and tool calls go there instead (index ->
    (reason, calls, text)), for an MCP loop to decide whether this was the last round."""
    calls: dict[int, list] = {}
    texts: dict[int, list] = {}
    async for i, ev in gen.events():
        if isinstance(ev, m.Delta):
            if ends is not None:  # (only a loop needs the round's text and calls)
                texts.setdefault(i, []).append(ev.text or "")
                calls.setdefault(i, []).extend(ev.tool_calls or [])
            if ev.reasoning:
                yield chunk([{"index": i, "delta": {field: ev.reasoning}, "logprobs": None, "finish_reason": None}])
            if ev.text or ev.logprobs or not (ev.tool_calls or ev.reasoning):
                yield chunk([{"index": i, "delta": {"content": ev.text},
                              "logprobs": _logprobs_obj(ev.logprobs or []) if logprobs else None,
                              "finish_reason": None}])
            for call in ev.tool_calls or []:
                # id and name on the first delta of a call, then the arguments as fragments.
                yield chunk([{"index": i, "delta": {"tool_calls": [{"index": call.index, "id": call.id,
                              "type": "function", "function": {"name": call.name, "arguments": ""}}]},
                              "logprobs": None, "finish_reason": None}])
                yield chunk([{"index": i, "delta": {"tool_calls": [{"index": call.index,
                              "function": {"arguments": call.arguments}}]}, "logprobs": None, "finish_reason": None}])
        elif isinstance(ev, m.Finished) and ends is None:
            yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish_reason(ev.finish_reason)}])
        elif isinstance(ev, m.Finished):
            ends[i] = (ev.finish_reason, calls.get(i, []), "".join(texts.get(i, [])))
        elif isinstance(ev, m.Error):
            raise gen.error(ev)


async def _stream(gen: Generation, rid: str, model: str, fingerprint: str, include_usage: bool, logprobs: bool,
                  field: str, loop=None, messages=None, next_round=None):
    """The chat.completion.chunk stream; with an MCP loop, each round's chunks, then one chunk per
    tool result (delta role "tool" with tool_call_id and content), then the next round's."""
    def chunk(choices, usage=None):
        obj = {"id": rid, "object": "chat.completion.chunk", "created": gen.created, "model": model,
               "system_fingerprint": fingerprint, "choices": choices}
        if include_usage:
            obj["usage"] = usage
        return sse.data(obj)

    try:
        for i in range(len(gen.cmds)):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": "", "refusal": None},
                          "logprobs": None, "finish_reason": None}])
        while True:
            ends: dict | None = {} if loop is not None else None
            async for piece in _round(gen, chunk, logprobs, field, ends):
                yield piece
            if loop is None:
                usage = gen.usage()
                break
            reason, calls, text = ends[0]
            if not loop.next_round(gen.totals(), calls, reason):
                usage = usage_dict(loop.total_usage())
                break
            for r in await loop.run(text, calls, messages):
                yield chunk([{"index": 0, "delta": {"role": "tool", "tool_call_id": r["id"], "name": r["name"],
                                                    "content": r["result"], "is_error": r["is_error"]},
                              "logprobs": None, "finish_reason": None}])
            gen.abort()
            _, gen = await next_round()
        for i in sorted(ends or {}):
            yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish_reason(ends[i][0])}])
        if include_usage:
            yield chunk([], usage)
        yield sse.DONE
    except APIError as e:  # an error event, or a timeout after the first byte: end the stream with it
        yield sse.data(e.body())
    finally:
        gen.abort()
