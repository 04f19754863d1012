"""OpenAI request bodies as typed structs, and the fields chat and completions share."""
from __future__ import annotations

from typing import Any

import msgspec

from ..errors import APIError


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ContentPart(msgspec.Struct):
    type: str
    text: str | None = None
    image_url: Any = None


class ChatMessageIn(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class _SamplingFields(msgspec.Struct, kw_only=True):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = None
    n: int | None = None
    user: str | None = None
    ignore_eos: bool = False
    priority: str | int | None = None
    speculative: bool | None = None  # false: no speculative drafts for this request
    session_id: str | None = None  # keep this conversation's KV state across turns (or the x-session-id header)


class ChatRequest(_SamplingFields, kw_only=True):
    messages: list[ChatMessageIn]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict | None = None
    reasoning_effort: str | None = None
    thinking_budget: int | None = None
    enable_thinking: bool | None = None
    chat_template_kwargs: dict | None = None
    mcp: bool | list[str] | None = None  # offer the MCP servers' tools and run the calls (api/mcp_loop.py)
    mcp_max_rounds: int | None = None


class CompletionRequest(_SamplingFields, kw_only=True):
    prompt: str | list[Any] | None = None
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


def sampling_fields(req: _SamplingFields) -> dict:
    """The sampling knobs chat and completions share, as GenerateArgs fields (None: not given)."""
    return {"temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "min_p": req.min_p,
            "frequency_penalty": req.frequency_penalty, "presence_penalty": req.presence_penalty,
            "repetition_penalty": req.repetition_penalty, "seed": req.seed, "ignore_eos": req.ignore_eos,
            "stop": [req.stop] if isinstance(req.stop, str) else list(req.stop or []),
            "n": 1 if req.n is None else req.n, "speculative": req.speculative, "session": req.session_id}


def check_stream_options(req: _SamplingFields) -> None:
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                       "invalid_value", "stream_options")


def response_format_of(fmt: dict | None, param: str = "response_format") -> dict | None:
    """OpenAI's response_format (chat) or text.format (Responses) as the protocol's form."""
    if fmt is not None and not isinstance(fmt, dict):
        raise APIError(400, f"Invalid '{param}': expected an object with a 'type'.", "invalid_type", param)
    if not fmt or fmt.get("type") in (None, "text"):
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema", fmt)  # chat nests it; Responses' text.format does not
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise APIError(400, f"Invalid '{param}': json_schema needs a 'schema' object.", "invalid_value", param)
        return {"type": "json_schema", "schema": schema}
    raise APIError(400, f"Invalid '{param}.type': {kind!r}; use 'text', 'json_object' or 'json_schema'.",
                   "invalid_value", param)


def _is_ids(x) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def texts_or_tokens(value, param: str) -> tuple[str, list]:
    """OpenAI's text inputs (a string, strings, token ids, or token-id arrays) as
    ("texts", [str, ...]) or ("tokens", [[int, ...], ...])."""
    if isinstance(value, str):
        return "texts", [value]
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        return "texts", list(value)
    if _is_ids(value):
        return "tokens", [list(value)]
    if isinstance(value, list) and value and all(_is_ids(x) for x in value):
        return "tokens", [list(x) for x in value]
    raise APIError(400, f"Invalid '{param}': expected a string, an array of strings, an array of token ids, or an "
                        "array of token id arrays.", "invalid_type", param)
