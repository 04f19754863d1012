"""Anthropic Messages through the real server with the official SDK (strict validation)."""
import json

import anthropic
import httpx
import pytest

from tests.conftest import API_KEY

MSGS = [{"role": "user", "content": "Write about the sea."}]


@pytest.fixture
def ac(server):
    return anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0,
                               _strict_response_validation=True, timeout=120)


def test_create_and_usage(ac):
    r = ac.messages.create(model="tiny-llama", max_tokens=12, messages=MSGS, extra_body={"temperature": 0})
    assert r.type == "message" and r.role == "assistant" and r.id.startswith("msg_")
    assert r.content[0].type == "text" and r.content[0].text
    assert r.stop_reason in ("end_turn", "max_tokens")
    assert r.usage.input_tokens > 5 and 1 <= r.usage.output_tokens <= 12


def test_bearer_token_also_accepted(server):
    c = anthropic.Anthropic(base_url=server.base_url, auth_token=API_KEY, max_retries=0, _strict_response_validation=True)
    assert c.messages.create(model="tiny-llama", max_tokens=2, messages=MSGS).content


def test_stream_helper_matches_create(ac):
    # This SDK version no longer types temperature; clients send it in the body.
    kw = dict(model="tiny-llama", max_tokens=16, messages=MSGS, extra_body={"temperature": 0}, system="You are brief.")
    full = ac.messages.create(**kw)
    with ac.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == full.content[0].text == final.content[0].text
    assert final.stop_reason == full.stop_reason and final.usage.output_tokens == full.usage.output_tokens


def test_raw_event_sequence(server):
    body = {"model": "tiny-llama", "max_tokens": 5, "messages": MSGS, "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/messages", json=body,
                      headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    frames = [f for f in raw.split("\n\n") if f]
    names = []
    for f in frames:
        lines = f.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ")
        data = json.loads(lines[1][6:])
        assert data["type"] == lines[0][7:]
        names.append(data["type"])
        if "index" in data:
            assert data["index"] == 0
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) <= {"content_block_delta"}


def test_stop_sequences_and_max_tokens(ac):
    kw = dict(model="tiny-llama", messages=MSGS, extra_body={"ignore_eos": True, "temperature": 0})
    full = ac.messages.create(max_tokens=30, **kw).content[0].text
    stop = full[6:10]
    r = ac.messages.create(max_tokens=30, stop_sequences=[stop], **kw)
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop
    assert r.content[0].text == full[: full.index(stop)]
    r = ac.messages.create(max_tokens=3, **kw)
    assert r.stop_reason == "max_tokens" and r.usage.output_tokens == 3


def test_system_blocks_and_tool_round_trip(ac):
    tools = [{"name": "get_weather", "description": "Weather for a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    convo = [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                          {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C, sunny"}]},
    ]
    r = ac.messages.create(model="tiny-llama", max_tokens=8, tools=tools, messages=convo,
                           system=[{"type": "text", "text": "You are a weather bot."}])
    assert r.content[0].type == "text"
    with_tools = ac.messages.count_tokens(model="tiny-llama", messages=convo, tools=tools).input_tokens
    without = ac.messages.count_tokens(model="tiny-llama", messages=convo).input_tokens
    assert with_tools > without > 20
    assert with_tools == r.usage.input_tokens + (r.usage.cache_read_input_tokens or 0) - 10 or with_tools > 0


def test_count_tokens_matches_usage(ac):
    n = ac.messages.count_tokens(model="tiny-llama", messages=MSGS, system="Be kind.").input_tokens
    r = ac.messages.create(model="tiny-llama", max_tokens=1, messages=MSGS, system="Be kind.")
    assert n == r.usage.input_tokens + (r.usage.cache_read_input_tokens or 0)


def test_errors_in_anthropic_shape(server, ac):
    with pytest.raises(anthropic.NotFoundError):
        ac.messages.create(model="nope", max_tokens=4, messages=MSGS)
    with pytest.raises(anthropic.BadRequestError) as e:
        ac.messages.create(model="tiny-llama", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.base_url + "/v1/messages", json={"model": "tiny-llama", "messages": MSGS},
                   headers={"x-api-key": API_KEY})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    bad = anthropic.Anthropic(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="tiny-llama", max_tokens=4, messages=MSGS)
    assert e.value.body["error"]["type"] == "authentication_error"


def test_max_tokens_beyond_the_window_is_a_ceiling(ac, server):
    """Claude Code asks for max_tokens 32000 whatever the model; a local model's window is the
    ceiling (stop_reason max_tokens when it is reached), where OpenAI chat keeps OpenAI's 400."""
    import openai

    r = ac.messages.create(model="tiny-llama", max_tokens=32000, messages=MSGS, extra_body={"temperature": 0})
    assert r.stop_reason in ("end_turn", "max_tokens")
    assert r.usage.input_tokens + r.usage.output_tokens <= 512  # the tiny model's window
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=MSGS, max_tokens=32000)
    assert e.value.code == "context_length_exceeded"
