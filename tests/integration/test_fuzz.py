"""Property-based fuzzing of every route against a real gateway + worker.

Bodies start from a valid request per route, built from the route's own schema fields, and
are mutated: a field set to any JSON value (wrong types, huge numbers, deep nesting, odd
unicode, lone surrogates), a required field dropped, a nested message part replaced, the
whole body swapped for a non-object. Every answer must be a 2xx, or a 4xx in the route's error
shape, within the time limit, with no worker restart and no traceback in the log.

CI runs a bounded, derandomized pass (NOVAMLX_FUZZ_EXAMPLES per route, default 25);
`bin/fuzz` runs the same properties long and random.
"""
from __future__ import annotations

import json
import os

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novamlx_gateway.api.anthropic_messages import CountRequest, MessagesRequest
from novamlx_gateway.api.openai_embeddings import EmbeddingsRequest
from novamlx_gateway.api.openai_responses import ResponsesRequest
from novamlx_gateway.api.openai_schema import ChatRequest, CompletionRequest
from novamlx_gateway.api.rerank import RerankRequest

EXAMPLES = int(os.environ.get("NOVAMLX_FUZZ_EXAMPLES", "25"))
RANDOM = os.environ.get("NOVAMLX_FUZZ_RANDOM") == "1"
TIME_LIMIT_S = 30.0
MODEL, EMB = "tiny-llama", "all-minilm-l6-v2"
HI = [{"role": "user", "content": "hi"}]

ROUTES = {
    # path: (schema, a valid body, fields whose nested parts are worth mutating)
    "/v1/chat/completions": (ChatRequest, {"model": MODEL, "messages": HI, "max_tokens": 4}, "messages"),
    "/v1/completions": (CompletionRequest, {"model": MODEL, "prompt": "hi", "max_tokens": 4}, None),
    "/v1/messages": (MessagesRequest, {"model": MODEL, "messages": HI, "max_tokens": 4}, "messages"),
    "/v1/messages/count_tokens": (CountRequest, {"model": MODEL, "messages": HI}, "messages"),
    "/v1/responses": (ResponsesRequest, {"model": MODEL, "input": HI, "max_output_tokens": 4}, "input"),
    "/v1/embeddings": (EmbeddingsRequest, {"model": EMB, "input": ["hi", "there"]}, None),
    "/v1/rerank": (RerankRequest, {"model": EMB, "query": "q", "documents": ["a", "b"]}, None),
}

EXTREMES = st.sampled_from([None, True, 0, -1, 1, 2**31, 2**63, 2**64, -(2**64), 10**70, 1e308, -1e308, 0.5,
                            "", "\ud800", "\x00", "é" * 3, "🙂", "x" * 5000, [], {}, [[]], {"": None},
                            {"type": "function"}, {"type": "json_schema", "json_schema": {"schema": {"type": "array"}}}])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
JSON = st.recursive(SCALARS | EXTREMES, lambda inner: st.lists(inner, max_size=4) |
                    st.dictionaries(st.text(max_size=10) | st.sampled_from(["type", "role", "content", "text", "name"]),
                                    inner, max_size=4), max_leaves=12)


def _deep(depth: int):
    value = "x"
    for _ in range(depth):
        value = [value]
    return value


VALUES = JSON | EXTREMES | st.integers(10, 800).map(_deep)  # (deeper: test_hostile, as raw text)

# Near-valid shapes: right keys, any values; these reach past the first type check.
PART_TYPES = ["text", "image_url", "input_text", "input_image", "output_text", "tool_use", "tool_result", "image",
              "function_call", "function_call_output", "thinking", "message"]
PART = st.fixed_dictionaries({"type": st.sampled_from(PART_TYPES) | VALUES},
                             optional={"text": VALUES, "image_url": VALUES, "content": VALUES, "id": VALUES,
                                       "name": VALUES, "input": VALUES, "tool_use_id": VALUES, "call_id": VALUES,
                                       "arguments": VALUES, "output": VALUES, "role": VALUES, "source": VALUES})
TOOL = st.fixed_dictionaries({"type": st.sampled_from(["function", "custom", "web_search", "namespace"]) | VALUES},
                             optional={"function": st.fixed_dictionaries({"name": VALUES}, optional={
                                 "parameters": VALUES, "description": VALUES}), "name": VALUES,
                                 "parameters": VALUES, "input_schema": VALUES, "tools": VALUES})
SHAPED = {
    "content": st.lists(PART, max_size=3) | VALUES,
    "tools": st.lists(TOOL, max_size=3),
    "tool_choice": st.sampled_from(["auto", "none", "required", "any"]) | st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "tool", "any", "auto", "none"])},
        optional={"name": VALUES, "function": st.fixed_dictionaries({"name": VALUES})}),
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["json_object", "json_schema", "text"])},
                                             optional={"json_schema": st.fixed_dictionaries({"schema": VALUES}),
                                                       "schema": VALUES}),
    "text": st.fixed_dictionaries({"format": VALUES | st.fixed_dictionaries(
        {"type": st.sampled_from(["json_schema", "json_object", "text"])}, optional={"schema": VALUES})}),
    "thinking": st.fixed_dictionaries({"type": st.sampled_from(["enabled", "disabled"]) | VALUES},
                                      optional={"budget_tokens": VALUES}),
    "reasoning": st.fixed_dictionaries({}, optional={"effort": st.sampled_from(["low", "high", "none"]) | VALUES}),
    "stop": st.lists(st.text(max_size=5), max_size=20) | VALUES,
    "input": st.lists(PART, max_size=3) | VALUES,
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool",
                                                                         "developer"]) | VALUES},
                                               optional={"content": st.lists(PART, max_size=3) | VALUES,
                                                         "tool_calls": VALUES, "tool_call_id": VALUES}),
                         max_size=3),
}


def value_for(draw, name: str):
    shaped = SHAPED.get(name)
    return draw(shaped if shaped is not None and draw(st.booleans()) else VALUES)


@st.composite
def bodies(draw, path: str):
    schema, base, nested = ROUTES[path]
    fields = [f.encode_name for f in msgspec.structs.fields(schema)] + ["unknown_field", "stream"]
    body = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "set", "set", "drop", "nested", "nested", "swap"]))
        if op == "set":
            name = draw(st.sampled_from(fields))
            body[name] = value_for(draw, name)
        elif op == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif op == "nested" and nested and isinstance(body.get(nested), list) and body[nested]:
            part = draw(st.sampled_from(["role", "content", "type", "tool_calls", "name", "tool_call_id", "text"]))
            item = body[nested][0]
            if isinstance(item, dict):
                item[part] = value_for(draw, part)
        elif op == "swap" and draw(st.booleans()):
            return draw(VALUES)
    if isinstance(body, dict) and body.get("stream") is True and path not in ("/v1/chat/completions", "/v1/completions",
                                                                             "/v1/messages", "/v1/responses"):
        body.pop("stream")
    return body


def _check(server, path: str, body) -> None:
    raw = json.dumps(body).encode()  # ensure_ascii: lone surrogates travel as escapes
    r = httpx.post(server.base_url + path, content=raw, timeout=TIME_LIMIT_S,
                   headers={**server.headers, "content-type": "application/json"})
    assert r.status_code < 500, (path, raw[:300], r.status_code, r.text[:300])
    if r.status_code >= 400:
        err = r.json()
        if path.startswith("/v1/messages"):
            assert err["type"] == "error" and isinstance(err["error"]["type"], str), r.text
        assert isinstance(err["error"]["message"], str) and err["error"]["message"], r.text


@pytest.fixture(scope="module")
def baseline(server):
    return server.health()["worker"]["restarts"]


@pytest.mark.parametrize("path", list(ROUTES))
def test_fuzzed_bodies_get_a_clear_answer(server, baseline, path):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        _check(server, path, data.draw(bodies(path)))

    run()
    assert server.health()["worker"]["restarts"] == baseline
    log = server.log_path.read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]
