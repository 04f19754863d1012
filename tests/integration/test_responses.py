"""The OpenAI Responses API with the official SDK: create, stream, store, chain, tools."""
import json

import httpx
import openai
import pytest

from tests.conftest import Server


def test_create_and_retrieve_and_delete(client):
    r = client.responses.create(model="tiny-llama", input="Say hello", max_output_tokens=8, temperature=0)
    assert r.status in ("completed", "incomplete") and r.output_text
    assert r.usage.input_tokens > 3 and r.usage.output_tokens <= 8
    got = client.responses.retrieve(r.id)
    assert got.output_text == r.output_text
    items = client.responses.input_items.list(r.id)
    assert items.data[0].type == "message"
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_store_false_is_not_retrievable(client):
    r = client.responses.create(model="tiny-llama", input="hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_incomplete_on_max_output_tokens(client):
    r = client.responses.create(model="tiny-llama", input="go", max_output_tokens=3, extra_body={"ignore_eos": True})
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


def test_stream_helper_on_the_default_model(default_server):
    """The SDK's stream helper needs response.completed: the real model ends its answer itself."""
    client = default_server.openai()
    kw = dict(model="smollm2-135m-instruct", input=[{"role": "user", "content": "Say hello."}],
              instructions="Be brief.", max_output_tokens=80, temperature=0)
    full = client.responses.create(**kw)
    assert full.status == "completed"
    with client.responses.stream(**kw) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == full.output_text
    assert final.usage.output_tokens == full.usage.output_tokens


def test_raw_event_order(server):
    kw = dict(model="tiny-llama", input=[{"role": "user", "content": "hello"}], instructions="Be brief.",
              max_output_tokens=10, temperature=0)
    body = {**kw, "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/responses", json=body, headers=server.headers) as r:
        frames = [f for f in r.read().decode().split("\n\n") if f]
    events = [json.loads(f.split("\n")[1][6:]) for f in frames]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          types[-1]] and types[-1] in ("response.completed", "response.incomplete")


def test_previous_response_id_continues(client):
    first = client.responses.create(model="tiny-llama", input="My name is Ada. " * 20, max_output_tokens=6,
                                    temperature=0)
    second = client.responses.create(model="tiny-llama", input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=6, temperature=0)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= 64  # the earlier turn came from the prefix cache
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="tiny-llama", input="x", previous_response_id="resp_doesnotexist123")


def test_function_call_round_trip(client):
    tools = [{"type": "function", "name": "lookup", "description": "Look up a fact",
              "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    r = client.responses.create(model="tiny-llama", tools=tools, max_output_tokens=6, input=[
        {"role": "user", "content": "Find the capital of France"},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"q": "capital of France"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Paris"},
    ])
    assert r.status in ("completed", "incomplete") and r.output[0].type == "message"


def test_stored_responses_survive_restart(tiny_model, tmp_path):
    s = Server(["--model", str(tiny_model)], tmp_path).wait_ready()
    r = s.openai().responses.create(model="tiny-llama", input="remember me", max_output_tokens=4)
    s.stop()
    s2 = Server(["--model", str(tiny_model)], tmp_path).wait_ready()
    try:
        assert s2.openai().responses.retrieve(r.id).output_text == r.output_text
    finally:
        s2.stop()


def test_max_output_tokens_beyond_the_window_is_a_ceiling(client):
    r = client.responses.create(model="tiny-llama", input="Write about the sea.", max_output_tokens=32000,
                                temperature=0)
    assert r.status in ("completed", "incomplete")
    assert r.usage.input_tokens + r.usage.output_tokens <= 512


def test_codex_style_tools_namespace_and_hosted(client):
    """Codex sends `namespace` tools (functions grouped under a name) and hosted tools such as
    web_search: namespaced functions are offered as `ns.fn` and called back with name + namespace;
    hosted tools, which only OpenAI can run, are not offered; an unknown tool type is a 400."""
    import openai

    tools = [{"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {}}},
             {"type": "namespace", "name": "agents", "description": "Sub-agents", "tools": [
                 {"type": "function", "name": "spawn_agent", "description": "Start one",
                  "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}]},
             {"type": "web_search", "external_web_access": False}]
    r = client.responses.create(model="tiny-llama", tools=tools, input="SCRIPT:namespaced")
    call = next(o for o in r.output if o.type == "function_call")
    assert call.name == "spawn_agent" and call.namespace == "agents" and '"list files"' in call.arguments
    # the call goes back in the next turn's input with its namespace
    follow = client.responses.create(model="tiny-llama", tools=tools, max_output_tokens=4, input=[
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "namespace": call.namespace,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "done"}])
    assert follow.status in ("completed", "incomplete")
    with client.responses.stream(model="tiny-llama", tools=tools, input="SCRIPT:namespaced") as s:
        done = s.get_final_response()
    assert any(o.type == "function_call" and o.namespace == "agents" for o in done.output)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny-llama", input="x", tools=[{"type": "teleport"}])
    assert e.value.body["param"] == "tools"
