"""Tool calls parsed in the worker and rendered per wire format, through the official SDKs.

The tiny random model is driven by the test-only scripted output switch
(NOVAMLX_TEST_SCRIPTS, see novamlx_worker/faults.py) to emit exact tool-call markup.
"""
import json

import anthropic
import pytest

from tests.conftest import API_KEY

# Bounded schemas: a random model under a grammar must not be able to run to max_tokens.
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
             "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "additionalProperties": False}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "properties": {}, "additionalProperties": False}}}]


def script(name):
    return [{"role": "user", "content": f"SCRIPT:{name}"}]


def test_chat_tool_call_non_streaming(client):
    r = client.chat.completions.create(model="tiny-llama", messages=script("weather"), tools=TOOLS)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content == "Let me check the weather."
    (call,) = c.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_") and call.type == "function"


def test_chat_tool_call_streaming_deltas(client):
    stream = client.chat.completions.create(model="tiny-llama", messages=script("parallel"), tools=TOOLS, stream=True)
    content, calls, finish = "", {}, None
    for chunk in stream:
        for ch in chunk.choices:
            content += ch.delta.content or ""
            for d in ch.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                if d.id:
                    assert entry["id"] is None  # id and name only on the first delta of a call
                    entry["id"], entry["name"] = d.id, d.function.name
                entry["arguments"] += d.function.arguments or ""
            finish = ch.finish_reason or finish
    assert content == "" and finish == "tool_calls"
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert json.loads(calls[1]["arguments"]) == {"tz": "CET"}
    assert len({c["id"] for c in calls.values()}) == 2


def test_malformed_call_degrades_to_text(client):
    r = client.chat.completions.create(model="tiny-llama", messages=script("malformed"), tools=TOOLS)
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert "{city: Paris}" in r.choices[0].message.content


def test_tool_choice_none_leaves_text(client):
    r = client.chat.completions.create(model="tiny-llama", messages=script("weather"), tools=TOOLS, tool_choice="none")
    assert not r.choices[0].message.tool_calls and "<tool_call>" in r.choices[0].message.content


def test_tool_result_turn_is_accepted(client):
    r = client.chat.completions.create(model="tiny-llama", max_tokens=4, tools=TOOLS, messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                               "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ])
    assert r.choices[0].message is not None


def test_anthropic_tool_use_blocks(server):
    ac = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0, _strict_response_validation=True)
    tools = [{"name": t["function"]["name"], "description": "d", "input_schema": t["function"]["parameters"]} for t in TOOLS]
    r = ac.messages.create(model="tiny-llama", max_tokens=200, tools=tools, messages=script("weather"))
    assert r.stop_reason == "tool_use"
    assert [b.type for b in r.content] == ["text", "tool_use"]
    assert r.content[1].name == "get_weather" and r.content[1].input == {"city": "Paris"}
    with ac.messages.stream(model="tiny-llama", max_tokens=200, tools=tools, messages=script("parallel")) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["tool_use", "tool_use"] and final.stop_reason == "tool_use"
    assert final.content[1].input == {"tz": "CET"}


def test_responses_function_call_items(client):
    tools = [{"type": "function", "name": t["function"]["name"], "parameters": t["function"]["parameters"]} for t in TOOLS]
    r = client.responses.create(model="tiny-llama", tools=tools, input="SCRIPT:weather")
    kinds = [o.type for o in r.output]
    assert kinds == ["message", "function_call"]
    fc = r.output[1]
    assert fc.name == "get_weather" and json.loads(fc.arguments) == {"city": "Paris"} and fc.call_id
    with client.responses.stream(model="tiny-llama", tools=tools, input="SCRIPT:parallel") as s:
        events = [e.type for e in s]
        final = s.get_final_response()
    assert [o.type for o in final.output if o.type == "function_call"] == ["function_call", "function_call"]
    assert "response.function_call_arguments.done" in events


def test_reasoning_split_everywhere(server, client):
    r = client.chat.completions.create(model="tiny-llama", messages=script("think"))
    msg = r.choices[0].message
    assert msg.content == "The answer is 4."
    assert msg.model_extra["reasoning_content"] == "The user wants the sum. Two plus two is four."
    stream = client.chat.completions.create(model="tiny-llama", messages=script("think"), stream=True)
    content = reasoning = ""
    for chunk in stream:
        for ch in chunk.choices:
            content += ch.delta.content or ""
            reasoning += (ch.delta.model_extra or {}).get("reasoning_content") or ""
    assert (content, reasoning) == (msg.content, msg.model_extra["reasoning_content"])
    ac = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0, _strict_response_validation=True)
    a = ac.messages.create(model="tiny-llama", max_tokens=100, messages=script("think"))
    assert [b.type for b in a.content] == ["thinking", "text"] and a.content[1].text == "The answer is 4."
    with ac.messages.stream(model="tiny-llama", max_tokens=100, messages=script("think")) as s:
        final = s.get_final_message()
    assert final.content[0].thinking == a.content[0].thinking
    resp = client.responses.create(model="tiny-llama", input="SCRIPT:think")
    assert [o.type for o in resp.output] == ["reasoning", "message"] and resp.output_text == "The answer is 4."
    with client.responses.stream(model="tiny-llama", input="SCRIPT:think") as s:
        final_r = s.get_final_response()
    assert final_r.output_text == "The answer is 4." and final_r.output[0].type == "reasoning"


def test_control_tokens_never_reach_content(client):
    """The script decodes to control tokens mid-answer: they are dropped, and a turn opener stops it."""
    r = client.chat.completions.create(model="tiny-llama", messages=script("control"), max_tokens=40)
    text = r.choices[0].message.content
    assert text == "Hello there" and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("choice,names", [("required", {"get_weather", "get_time"}),
                                          ({"type": "function", "function": {"name": "get_weather"}}, {"get_weather"})])
def test_tool_choice_enforced_by_grammar(client, choice, names):
    """A random model never calls tools by itself; the grammar makes every sample a valid call."""
    for seed in range(3):
        r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "go"}], tools=TOOLS,
                                           tool_choice=choice, temperature=1.0, seed=seed, max_tokens=120)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", c.message.content
        (call,) = c.message.tool_calls
        assert call.function.name in names
        args = json.loads(call.function.arguments)
        if call.function.name == "get_weather":
            assert isinstance(args, dict) and set(args) <= {"city"}


def test_tool_choice_errors(client):
    import openai

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-llama", messages=script("weather"), tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-llama", messages=script("weather"), tool_choice="required")


def test_anthropic_tool_choice_any(server):
    ac = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0, _strict_response_validation=True)
    tools = [{"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS]
    r = ac.messages.create(model="tiny-llama", max_tokens=120, tools=tools, tool_choice={"type": "tool", "name": "get_time"},
                           messages=[{"role": "user", "content": "time?"}])
    assert r.stop_reason == "tool_use" and r.content[-1].type == "tool_use" and r.content[-1].name == "get_time"


def test_thinking_budget_forces_the_close_tag(client):
    free = client.chat.completions.create(model="tiny-llama", messages=script("long_think"))
    assert free.choices[0].message.model_extra["reasoning_content"].count("step") == 60
    r = client.chat.completions.create(model="tiny-llama", messages=script("long_think"),
                                       extra_body={"thinking_budget": 8})
    reasoning = r.choices[0].message.model_extra["reasoning_content"]
    assert reasoning.count("step") <= 10  # closed near the budget (the script then runs on as the answer)
    assert r.choices[0].message.content


def test_tool_call_inside_thinking(client):
    r = client.chat.completions.create(model="tiny-llama", messages=script("think_tool"), tools=TOOLS)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.tool_calls[0].function.name == "get_weather"
    assert json.loads(msg.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert "<tool_call>" not in msg.model_extra["reasoning_content"]


def test_configured_turn_stop_pattern(tiny_model, tmp_path):
    from tests.conftest import SCRIPTS, Server

    s = Server(["--model", str(tiny_model), "--turn-stop", "User:", "--embedding-model", "none"], tmp_path, keys=(),
               env={"NOVAMLX_TEST_SCRIPTS": str(SCRIPTS)}).wait_ready()
    try:
        r = s.openai().chat.completions.create(model="tiny-llama", messages=script("turn"))
        assert r.choices[0].message.content == "First turn done. " and r.choices[0].finish_reason == "stop"
    finally:
        s.stop()
