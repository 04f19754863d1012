"""OpenAI request bodies as typed structs, and their translation to protocol sampling."""
from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.requests import Request

from protocol.messages import Sampling

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


class CompletionRequest(_SamplingFields, kw_only=True):
    prompt: str | list[Any] | None = None
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


_PATH = re.compile(r"at `\$\.?([^`]*)`")


async def parse_body(request: Request, kind: type):
    ctype = request.headers.get("content-type", "")
    if "json" not in ctype.split(";")[0].lower():
        raise APIError(415, f"Unsupported content type {ctype or '(none)'!r}: send 'Content-Type: application/json'.",
                       "unsupported_media_type")
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "The request body is empty; expected a JSON object.", "invalid_json")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as e:
        text = str(e)
        found = _PATH.search(text)
        param = found.group(1) if found else None
        if text.startswith("Object missing required field"):
            field = text.split("`")[1]
            param = f"{param}.{field}" if param else field
            raise APIError(400, f"Missing required parameter: '{param}'.", "missing_required_parameter", param)
        raise APIError(400, f"Invalid value for '{param or 'body'}': {text}", "invalid_type", param)
    except msgspec.DecodeError as e:
        raise APIError(400, f"We could not parse the JSON body of your request: {e}. Send a valid JSON object.",
                       "invalid_json")


def _check_range(name: str, value, lo, hi) -> None:
    if value is not None and not (lo <= value <= hi):
        raise APIError(400, f"Invalid '{name}': {value} is not within [{lo}, {hi}].", "invalid_value", name)


def sampling_from(req: _SamplingFields, max_tokens: int | None, logprobs: bool, top_logprobs: int,
                  defaults: dict | None = None) -> Sampling:
    _check_range("temperature", req.temperature, 0, 2)
    _check_range("top_p", req.top_p, 0, 1)
    _check_range("min_p", req.min_p, 0, 1)
    _check_range("frequency_penalty", req.frequency_penalty, -2, 2)
    _check_range("presence_penalty", req.presence_penalty, -2, 2)
    _check_range("repetition_penalty", req.repetition_penalty, 0.01, 10)
    _check_range("top_logprobs", top_logprobs, 0, 20)
    if req.top_k is not None and req.top_k < -1:
        raise APIError(400, f"Invalid 'top_k': {req.top_k}; use -1 or 0 to disable, or a positive number.", "invalid_value", "top_k")
    if max_tokens is not None and max_tokens < 1:
        name = "max_tokens"
        raise APIError(400, f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {max_tokens} instead.",
                       "integer_below_min_value", name)
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 16:
        raise APIError(400, "Invalid 'stop': at most 16 stop sequences are supported.", "invalid_value", "stop")
    d = defaults or {}

    def pick(name, builtin):
        value = getattr(req, name)
        return value if value is not None else d.get(name, builtin)

    return Sampling(
        temperature=pick("temperature", 1.0), top_p=pick("top_p", 1.0), top_k=max(pick("top_k", 0), 0),
        min_p=pick("min_p", 0.0), frequency_penalty=pick("frequency_penalty", 0.0),
        presence_penalty=pick("presence_penalty", 0.0), repetition_penalty=pick("repetition_penalty", 1.0),
        seed=pick("seed", None), max_tokens=max_tokens if max_tokens is not None else d.get("max_tokens"),
        stop=[s for s in stops if s], logprobs=logprobs, top_logprobs=top_logprobs, ignore_eos=req.ignore_eos)


def check_n(req: _SamplingFields, max_n: int) -> int:
    n = 1 if req.n is None else req.n
    if not 1 <= n <= max_n:
        raise APIError(400, f"Invalid 'n': {n}; this server supports 1 to {max_n} choices.", "invalid_value", "n")
    return n


PRIORITIES = {"low": -1, "normal": 0, "high": 1}


def priority_of(request: Request, value: str | int | None = None) -> int:
    """Scheduling priority from the body's `priority` or the `x-priority` header: low, normal, high."""
    raw = value if value is not None else request.headers.get("x-priority")
    if raw is None or raw == "":
        return 0
    if isinstance(raw, int) and not isinstance(raw, bool):
        return max(-1, min(1, raw))
    key = str(raw).strip().lower()
    if key in PRIORITIES:
        return PRIORITIES[key]
    raise APIError(400, f"Invalid priority {raw!r}: use low, normal or high.", "invalid_value", "priority")


def typed_sdk(request: Request) -> bool:
    """Requests from the official (Stainless-generated) SDKs, which validate responses against
    types stricter than OpenAI's own wire in three places: intermediate legacy-completions
    chunks (`finish_reason` typed non-null), the echoed first token's logprob (non-null), and
    base64 embeddings (typed as a float list and checked before the SDK decodes them). For those
    clients we send the closest typed value (floats for embeddings, which the SDK accepts as
    they are); raw clients get the exact wire."""
    return "x-stainless-lang" in request.headers


def response_format_of(fmt: dict | None, param: str = "response_format") -> dict | None:
    """OpenAI's response_format (chat) or text.format (Responses) as the protocol's form."""
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


EFFORT_BUDGET = {"minimal": 256, "low": 1024, "medium": 4096, "high": 16384}


def thinking_of(effort: str | None, budget: int | None, enable: bool | None,
                template_kwargs: dict | None) -> tuple[int | None, dict | None]:
    """(thinking token budget, chat-template variables) from the several ways clients ask."""
    kwargs = dict(template_kwargs or {})
    if effort is not None:
        if effort == "none":
            enable = False
        elif effort in EFFORT_BUDGET:
            budget = budget if budget is not None else EFFORT_BUDGET[effort]
        else:
            raise APIError(400, f"Invalid 'reasoning_effort': {effort!r}.", "invalid_value", "reasoning_effort")
    if budget is not None and budget < 0:
        raise APIError(400, "Invalid 'thinking_budget': it must be >= 0.", "invalid_value", "thinking_budget")
    if enable is not None:
        kwargs["enable_thinking"] = enable
    return budget, kwargs or None


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
