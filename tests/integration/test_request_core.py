"""One request core for every route: per-model settings, cut tool calls, UTF-8, one wire for
every client, route-named errors, current stats. Real gateway + worker, official SDKs."""
import json
import re

import anthropic
import httpx
import pytest

from tests.conftest import SCRIPTS, Server

ADMIN = {"x-admin-key": "adm"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
A_TOOLS = [{"name": "get_weather", "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
R_TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object",
                                                                      "properties": {"city": {"type": "string"}}}}]
HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture(scope="module")
def srv(tiny_model, tmp_path_factory):
    s = Server(["--model", str(tiny_model), "--admin-key", "adm", "--embedding-model", "none",
                "--health-interval", "60"], tmp_path_factory.mktemp("core"), keys=(),
               env={"NOVAMLX_TEST_SCRIPTS": str(SCRIPTS)}).wait_ready()
    yield s
    s.stop()


def settings(srv, **values):
    r = httpx.put(f"http://127.0.0.1:{srv.admin_port}/admin/models/tiny-llama/settings", headers=ADMIN, json=values)
    assert r.status_code == 200, r.text


def clear(srv):
    settings(srv, temperature=None, top_p=None, max_tokens=None, seed=None)


def anth(srv):
    return anthropic.Anthropic(base_url=srv.base_url, api_key="none", max_retries=0,
                               _strict_response_validation=True, timeout=120)


# ---- per-model settings apply on every route ----

def run_route(srv, route: str, stream: bool, messages=HI, **kw) -> tuple[str, int]:
    """(text, output tokens) of one request on a route, through its official SDK."""
    c = srv.openai()
    if route == "chat":
        if stream:
            chunks = list(c.chat.completions.create(model="tiny-llama", messages=messages, stream=True,
                                                    stream_options={"include_usage": True}, **kw))
            return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), chunks[-1].usage.completion_tokens
        r = c.chat.completions.create(model="tiny-llama", messages=messages, **kw)
        return r.choices[0].message.content, r.usage.completion_tokens
    if route == "completions":
        kw = {k: v for k, v in kw.items() if k != "extra_body"}
        c = srv.openai(strict=False)  # OpenAI's legacy stream: finish_reason null until the last chunk
        if stream:
            chunks = list(c.completions.create(model="tiny-llama", prompt="hi there", stream=True,
                                               stream_options={"include_usage": True}, **kw))
            return "".join(ch.choices[0].text for ch in chunks if ch.choices), chunks[-1].usage.completion_tokens
        r = c.completions.create(model="tiny-llama", prompt="hi there", **kw)
        return r.choices[0].text, r.usage.completion_tokens
    if route == "messages":
        kw = {k: v for k, v in kw.items() if k != "seed"}
        extra = kw.pop("extra_body", {})
        kw.setdefault("max_tokens", 1000)  # required by the API; the model's setting is then not used
        if "temperature" in kw:
            extra["temperature"] = kw.pop("temperature")
        a = anth(srv)
        if stream:
            with a.messages.stream(model="tiny-llama", messages=messages, extra_body=extra, **kw) as s:
                final = s.get_final_message()
        else:
            final = a.messages.create(model="tiny-llama", messages=messages, extra_body=extra, **kw)
        return "".join(b.text for b in final.content if b.type == "text"), final.usage.output_tokens
    kw = {k: v for k, v in kw.items() if k not in ("seed", "extra_body")}
    if "max_tokens" in kw:
        kw["max_output_tokens"] = kw.pop("max_tokens")
    if stream:
        final = [e for e in c.responses.create(model="tiny-llama", input=messages, stream=True, **kw)
                 if e.type in ("response.completed", "response.incomplete")][-1].response
    else:
        final = c.responses.create(model="tiny-llama", input=messages, **kw)
    return final.output_text, final.usage.output_tokens


ROUTES = [(r, s) for r in ("chat", "completions", "messages", "responses") for s in (False, True)]


@pytest.mark.parametrize("route,stream", ROUTES)
def test_model_temperature_zero_applies_and_request_overrides(srv, route, stream):
    clear(srv)
    settings(srv, temperature=0)
    try:
        a, _ = run_route(srv, route, stream, max_tokens=8)
        b, _ = run_route(srv, route, stream, max_tokens=8)
        greedy, _ = run_route(srv, route, stream, max_tokens=8, temperature=0)
        assert a == b == greedy  # the setting made it greedy
        sampled = {run_route(srv, route, stream, max_tokens=8, temperature=1.0)[0] for _ in range(3)}
        assert len(sampled) > 1  # the request's temperature wins over the setting
    finally:
        clear(srv)


@pytest.mark.parametrize("route,stream", ROUTES)
def test_model_max_tokens_applies_and_request_overrides(srv, route, stream):
    clear(srv)
    settings(srv, max_tokens=3)
    script = [{"role": "user", "content": "SCRIPT:unicode"}]  # a long forced answer: only max_tokens ends it
    extra = {"extra_body": {"ignore_eos": True}} if route == "completions" else {}
    try:
        if route != "messages":  # Anthropic requires max_tokens in every request
            assert run_route(srv, route, stream, messages=script, **extra)[1] == 3
        assert run_route(srv, route, stream, messages=script, max_tokens=5, **extra)[1] == 5
    finally:
        clear(srv)


@pytest.mark.parametrize("route,stream", ROUTES)
def test_model_seed_applies_and_request_overrides(srv, route, stream):
    clear(srv)
    settings(srv, seed=1234, temperature=1.0)
    try:
        a, _ = run_route(srv, route, stream, max_tokens=8)
        b, _ = run_route(srv, route, stream, max_tokens=8)
        assert a == b  # sampled, but seeded by the setting
        if route in ("chat", "completions"):  # the APIs with a seed field
            other = {run_route(srv, route, stream, max_tokens=8, seed=s)[0] for s in (1, 2, 3)}
            assert other - {a}
    finally:
        clear(srv)


def test_responses_reasoning_effort_is_read(srv):
    r = httpx.post(srv.base_url + "/v1/responses", json={"model": "tiny-llama", "input": "hi", "max_output_tokens": 2,
                                                         "reasoning": {"effort": "extreme"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning.effort"
    r = srv.openai().responses.create(model="tiny-llama", input="hi", max_output_tokens=2, reasoning={"effort": "low"})
    assert r.reasoning.effort == "low"


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"messages": HI, "temperature": 2.5}, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/responses", {"input": "x", "temperature": 5}, "temperature"),
    ("/v1/responses", {"input": "x", "top_p": 5}, "top_p"),
    ("/v1/messages", {"messages": HI, "max_tokens": 5, "temperature": 1.5}, None),  # Anthropic: [0, 1]
])
def test_temperature_and_top_p_bounded_on_every_route(srv, path, body, param):
    r = httpx.post(srv.base_url + path, json={"model": "tiny-llama", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    if param:
        assert err["param"] == param
    else:
        assert r.json()["type"] == "error" and err["type"] == "invalid_request_error"


# ---- a tool call cut by max_tokens is still a tool call ----

WEATHER = [{"role": "user", "content": "SCRIPT:weather"}]
MARKUP = re.compile(r"<tool|tool_call|\{\"name\"")


def cut_point(srv) -> int:
    """A max_tokens that ends the scripted answer inside the call's arguments."""
    c = srv.openai()
    for n in range(8, 40):
        r = c.chat.completions.create(model="tiny-llama", messages=WEATHER, tools=TOOLS, max_tokens=n)
        ch = r.choices[0]
        assert not MARKUP.search(ch.message.content or ""), (n, ch.message.content)
        if ch.finish_reason == "length" and ch.message.tool_calls and ch.message.tool_calls[0].function.arguments:
            return n
    raise AssertionError("no max_tokens cut the call inside its arguments")


def test_cut_tool_call_on_chat(srv):
    n = cut_point(srv)
    c = srv.openai()
    r = c.chat.completions.create(model="tiny-llama", messages=WEATHER, tools=TOOLS, max_tokens=n)
    ch = r.choices[0]
    (call,) = ch.message.tool_calls
    assert ch.finish_reason == "length" and call.function.name == "get_weather"
    assert '{"city": "Paris"}'.startswith(call.function.arguments) and call.function.arguments
    assert ch.message.content == "Let me check the weather."
    content, args, name, finish = "", "", None, None
    for chunk in c.chat.completions.create(model="tiny-llama", messages=WEATHER, tools=TOOLS, max_tokens=n, stream=True):
        for d in chunk.choices:
            content += d.delta.content or ""
            for t in d.delta.tool_calls or []:
                name = name or t.function.name
                args += t.function.arguments or ""
            finish = d.finish_reason or finish
    assert (content, name, args, finish) == (ch.message.content, "get_weather", call.function.arguments, "length")


def test_cut_tool_call_on_messages(srv):
    n = cut_point(srv)
    a = anth(srv)
    kw = dict(model="tiny-llama", messages=WEATHER, tools=A_TOOLS, max_tokens=n)
    r = a.messages.create(**kw)
    with a.messages.stream(**kw) as s:
        streamed = s.get_final_message()
    for msg in (r, streamed):
        assert msg.stop_reason == "max_tokens"
        kinds = [b.type for b in msg.content]
        assert kinds == ["text", "tool_use"], kinds
        assert msg.content[0].text == "Let me check the weather."
        use = msg.content[1]
        assert use.name == "get_weather" and isinstance(use.input, dict)
        assert use.input in ({}, {"city": "Paris"}) or "Paris".startswith(use.input.get("city", "-"))
    assert r.content[1].input == streamed.content[1].input


def test_cut_tool_call_on_responses(srv):
    n = cut_point(srv)
    c = srv.openai()
    r = c.responses.create(model="tiny-llama", input=WEATHER, tools=R_TOOLS, max_output_tokens=n)
    events = list(c.responses.create(model="tiny-llama", input=WEATHER, tools=R_TOOLS, max_output_tokens=n, stream=True))
    streamed = events[-1].response
    assert events[-1].type == "response.incomplete"
    for resp in (r, streamed):
        assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
        calls = [o for o in resp.output if o.type == "function_call"]
        assert len(calls) == 1 and calls[0].status == "incomplete" and calls[0].name == "get_weather"
        assert '{"city": "Paris"}'.startswith(calls[0].arguments)
        assert not MARKUP.search(resp.output_text)


def test_cut_reply_never_ends_in_replacement_char(srv):
    c = srv.openai()
    script = [{"role": "user", "content": "SCRIPT:unicode"}]
    full = c.chat.completions.create(model="tiny-llama", messages=script).choices[0].message.content
    for n in range(1, 40):
        text = c.chat.completions.create(model="tiny-llama", messages=script, max_tokens=n).choices[0].message.content
        assert "\ufffd" not in text and full.startswith(text), (n, text)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in
                       c.chat.completions.create(model="tiny-llama", messages=script, max_tokens=17, stream=True)
                       if ch.choices)
    assert "\ufffd" not in streamed and full.startswith(streamed)


# ---- one wire for every client ----

SDK_HEADERS = {"x-stainless-lang": "python", "x-stainless-package-version": "2.0.0", "user-agent": "OpenAI/Python 2.0.0"}
VOLATILE = re.compile(rb'"(id|created|created_at|system_fingerprint)":\s*("[^"]*"|\d+)')


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "Once", "max_tokens": 6, "temperature": 0, "stream": True, "logprobs": 2}),
    ("/v1/completions", {"prompt": "Once", "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 1}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 6, "temperature": 0, "stream": True}),
])
def test_same_bytes_with_and_without_sdk_headers(srv, path, body):
    raw = httpx.post(srv.base_url + path, json={"model": "tiny-llama", **body}).content
    sdk = httpx.post(srv.base_url + path, json={"model": "tiny-llama", **body}, headers=SDK_HEADERS).content
    assert VOLATILE.sub(b"", raw) == VOLATILE.sub(b"", sdk)
    if body.get("stream") and path == "/v1/completions":
        chunks = [json.loads(line[6:]) for line in raw.decode().splitlines()
                  if line.startswith("data: {")]
        reasons = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]]
        assert reasons[:-1] == [None] * (len(reasons) - 1) and reasons[-1] in ("stop", "length")
    if body.get("echo"):
        lp = json.loads(raw)["choices"][0]["logprobs"]
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # OpenAI's wire


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", {"messages": HI}),
                                       ("/v1/completions", {"prompt": "x"})])
def test_stream_options_without_stream_is_400(srv, path, body):
    r = httpx.post(srv.base_url + path, json={"model": "tiny-llama", "stream_options": {"include_usage": True}, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
    assert "only allowed when 'stream' is enabled" in r.json()["error"]["message"]


def test_errors_name_the_routes_own_fields(srv):
    long = "word " * 2000  # past the tiny model's 512-token window
    r = httpx.post(srv.base_url + "/v1/responses", json={"model": "tiny-llama", "input": long})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(srv.base_url + "/v1/completions", json={"model": "tiny-llama", "prompt": long})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(srv.base_url + "/v1/chat/completions",
                   json={"model": "tiny-llama", "messages": [{"role": "user", "content": long}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_streamed_anthropic_usage_reports_cache_reads(srv):
    a = anth(srv)
    ctx = [{"role": "user", "content": "A long shared context about ships and the sea. " * 20}]
    kw = dict(model="tiny-llama", max_tokens=4, messages=ctx, extra_body={"temperature": 0})
    a.messages.create(**kw)  # fills the prefix cache
    full = a.messages.create(**kw)
    assert full.usage.cache_read_input_tokens > 0
    with a.messages.stream(**kw) as s:
        start = next(e for e in s if e.type == "message_start")
        for _ in s:
            pass
        final = s.get_final_message()
    assert start.message.usage.cache_read_input_tokens == full.usage.cache_read_input_tokens
    assert start.message.usage.input_tokens == full.usage.input_tokens
    assert final.usage.model_dump() == full.usage.model_dump()


def test_stats_are_current_without_waiting_for_the_push(srv):
    """The health push is every 60 s here: /v1/stats must still count a request at once."""
    before = httpx.get(srv.base_url + "/v1/stats").json()["engine"]["total_completed"]
    srv.openai().chat.completions.create(model="tiny-llama", messages=HI, max_tokens=2)
    stats = httpx.get(srv.base_url + "/v1/stats").json()
    assert stats["engine"]["total_completed"] == before + 1
    health = httpx.get(srv.base_url + "/health").json()["health"]
    assert health["engine"]["total_completed"] == before + 1
