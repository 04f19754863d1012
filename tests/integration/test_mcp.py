"""The MCP client against real MCP servers written with the official SDK (stdio and streamable
HTTP): discovery and namespacing, execute, admin add/disable/remove, a tool timeout, a server
that dies mid-call (a clear error, then it is reconnected)."""
import json
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, SCRIPTS, Server, free_port

ADMIN = {"authorization": "Bearer adm"}
SERVER_PY = str(ROOT / "tests" / "fixtures" / "mcp_server.py")


@pytest.fixture(scope="module")
def http_mcp():
    port = free_port()
    proc = subprocess.Popen([sys.executable, SERVER_PY, "http", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url
    proc.kill()


@pytest.fixture(scope="module")
def mserver(tiny_model, http_mcp, tmp_path_factory):
    data = tmp_path_factory.mktemp("mcp")
    (data / "settings.toml").write_text(
        "[[mcp_servers]]\n"
        f'name = "local"\ntransport = "stdio"\ncommand = {json.dumps(sys.executable)}\n'
        f'args = [{json.dumps(SERVER_PY)}, "stdio"]\ntimeout = 2\n')
    s = Server(["--model", str(tiny_model), "--admin-key", "adm", "--embedding-model", "none",
                "--config", str(data / "settings.toml")], data, env={"NOVAMLX_TEST_SCRIPTS": str(SCRIPTS)}).wait_ready()
    yield s
    s.stop()


def admin(s, path):
    return f"http://127.0.0.1:{s.admin_port}/admin/api/mcp/{path}"


def tools(s) -> list[str]:
    return [t["function"]["name"] for t in httpx.get(s.base_url + "/v1/mcp/tools", headers=s.headers).json()["data"]]


def wait_for(predicate, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def execute(s, name, arguments=None):
    return httpx.post(s.base_url + "/v1/mcp/execute", headers=s.headers, json={"name": name, "arguments": arguments},
                      timeout=30)


def test_stdio_server_from_settings_discovered_and_executed(mserver):
    assert wait_for(lambda: "local__add" in tools(mserver))
    assert {"local__add", "local__echo", "local__slow", "local__die"} <= set(tools(mserver))
    add = next(t for t in httpx.get(mserver.base_url + "/v1/mcp/tools", headers=mserver.headers).json()["data"]
               if t["function"]["name"] == "local__add")
    assert add["function"]["parameters"]["required"] == ["a", "b"] and add["function"]["description"]
    r = execute(mserver, "local__add", {"a": 2, "b": 40})
    assert r.status_code == 200 and r.json()["text"] == "42" and r.json()["is_error"] is False
    assert execute(mserver, "local__echo", {"text": "héllo ✓"}).json()["text"] == "héllo ✓"
    assert execute(mserver, "local__nope").status_code == 404
    assert execute(mserver, "nobody__add").status_code == 404
    assert execute(mserver, "plainname").status_code == 400
    assert execute(mserver, "local__add", [1, 2]).status_code == 400
    bad = execute(mserver, "local__add", {"a": "x"})  # the server's own validation: an error result, not a crash
    assert bad.status_code == 200 and bad.json()["is_error"] is True


def test_timeout_and_a_server_that_dies(mserver):
    assert wait_for(lambda: "local__slow" in tools(mserver))
    t = time.time()
    r = execute(mserver, "local__slow", {"seconds": 10})
    assert r.status_code == 504 and time.time() - t < 8 and "within 2 s" in r.json()["error"]["message"]
    r = execute(mserver, "local__die")
    assert r.status_code in (502, 503, 504) and r.json()["error"]["code"].startswith("mcp_")
    # it is reconnected (a fresh subprocess) and serves again
    assert wait_for(lambda: execute(mserver, "local__add", {"a": 1, "b": 1}).status_code == 200, 60)
    servers = httpx.get(admin(mserver, "servers"), headers=ADMIN).json()["servers"]
    local = next(x for x in servers if x["name"] == "local")
    assert local["status"] == "ready" and local["source"] == "settings"


def test_admin_adds_http_server_disables_and_removes_it(mserver, http_mcp):
    bad = httpx.post(admin(mserver, "servers"), headers=ADMIN, json={"name": "a__b", "transport": "http", "url": http_mcp})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
    bad = httpx.post(admin(mserver, "servers"), headers=ADMIN, json={"name": "web", "transport": "http"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "url"
    r = httpx.post(admin(mserver, "servers"), headers=ADMIN,
                   json={"name": "web", "transport": "http", "url": http_mcp, "headers": {"x-token": "secret"}})
    assert r.status_code == 201 and r.json()["headers"] == {"x-token": "***"}  # secrets never shown
    assert wait_for(lambda: "web__add" in tools(mserver))
    assert execute(mserver, "web__add", {"a": 5, "b": 6}).json()["text"] == "11"
    assert "local__add" in tools(mserver)  # namespaced side by side
    assert httpx.post(admin(mserver, "servers/web/disable"), headers=ADMIN).json()["status"] == "disabled"
    assert "web__add" not in tools(mserver) and execute(mserver, "web__add", {"a": 1, "b": 1}).status_code == 503
    assert httpx.post(admin(mserver, "servers/web/enable"), headers=ADMIN).status_code == 200
    assert wait_for(lambda: "web__add" in tools(mserver))
    assert httpx.get(admin(mserver, "tools"), headers=ADMIN).status_code == 200
    assert httpx.delete(admin(mserver, "servers/local"), headers=ADMIN).status_code == 409  # from the settings file
    assert httpx.delete(admin(mserver, "servers/web"), headers=ADMIN).status_code == 200
    assert "web__add" not in tools(mserver)
    assert httpx.delete(admin(mserver, "servers/web"), headers=ADMIN).status_code == 404


def test_chat_tool_loop_through_the_openai_sdk(mserver):
    """The model (scripted) calls local__add, then local__echo, then answers: the gateway runs both
    calls and returns the final answer, with what ran under `mcp`; streamed, the tool results come
    as chunks with role "tool" between the rounds' deltas."""
    assert wait_for(lambda: "local__add" in tools(mserver))
    c = mserver.openai()
    r = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "SCRIPT:mcp_add"}],
                                  extra_body={"mcp": ["local"]})
    assert r.choices[0].message.content == "The answer is 42." and r.choices[0].finish_reason == "stop"
    ran = r.model_extra["mcp"]
    assert ran["rounds"] == 3 and [x["name"] for x in ran["calls"]] == ["local__add", "local__echo"]
    assert [x["result"] for x in ran["calls"]] == ["42", "forty-two"]
    assert r.usage.completion_tokens > len("The answer is 42.") // 8  # three rounds counted

    stream = c.chat.completions.create(model="tiny-llama", stream=True, extra_body={"mcp": True},
                                       messages=[{"role": "user", "content": "SCRIPT:mcp_add"}])
    text, results, finish, names = "", [], None, []
    for chunk in stream:
        for ch in chunk.choices:
            if ch.delta.role == "tool":
                results.append((ch.delta.model_extra["tool_call_id"], ch.delta.content))
                continue
            text += ch.delta.content or ""
            names += [d.function.name for d in ch.delta.tool_calls or [] if d.function and d.function.name]
            finish = ch.finish_reason or finish
    assert names == ["local__add", "local__echo"] and [x[1] for x in results] == ["42", "forty-two"]
    assert text == "I will add them.Now echo it.The answer is 42." and finish == "stop"


def test_tool_loop_is_bounded_and_refusals(mserver):
    assert wait_for(lambda: "local__add" in tools(mserver))
    c = mserver.openai()
    r = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "SCRIPT:mcp_loop"}],
                                  extra_body={"mcp": True, "mcp_max_rounds": 2})
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.tool_calls  # handed to the client
    assert len(r.model_extra["mcp"]["calls"]) == 2
    for body, param in (({"mcp": ["nobody"]}, "mcp"), ({"mcp": "yes"}, "mcp"), ({"mcp": True, "mcp_max_rounds": 0},
                        "mcp_max_rounds"), ({"mcp": True, "n": 2}, "n")):
        bad = httpx.post(mserver.base_url + "/v1/chat/completions", headers=mserver.headers,
                         json={"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], **body})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, (body, bad.text)


def test_messages_tool_loop_through_the_anthropic_sdk(mserver):
    """Anthropic Messages: the calls the gateway runs come back as mcp_tool_use and mcp_tool_result
    blocks (the MCP connector's wire), in one message, streamed and not."""
    import anthropic

    assert wait_for(lambda: "local__add" in tools(mserver))
    c = anthropic.Anthropic(base_url=mserver.base_url, api_key=mserver.keys[0], max_retries=0)
    r = c.messages.create(model="tiny-llama", max_tokens=200, extra_body={"mcp": True},
                          messages=[{"role": "user", "content": "SCRIPT:mcp_add"}])
    kinds = [b.type for b in r.content]
    assert kinds == ["text", "mcp_tool_use", "mcp_tool_result", "text", "mcp_tool_use", "mcp_tool_result", "text"]
    use, result = r.content[1], r.content[2]
    assert use.name == "add" and use.server_name == "local" and use.input == {"a": 2, "b": 40}
    assert result.tool_use_id == use.id and result.content[0]["text"] == "42" and result.is_error is False
    assert r.content[-1].text == "The answer is 42." and r.stop_reason == "end_turn"

    with httpx.stream("POST", mserver.base_url + "/v1/messages", headers=mserver.headers, timeout=60, json={
            "model": "tiny-llama", "max_tokens": 200, "stream": True, "mcp": True,
            "messages": [{"role": "user", "content": "SCRIPT:mcp_add"}]}) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [e["index"] for e in starts] == list(range(7))
    assert [e["content_block"]["type"] for e in starts] == kinds
    assert [e["type"] for e in events].count("message_start") == 1 and events[-1]["type"] == "message_stop"
    stop = [e for e in events if e["type"] == "message_delta"]
    assert len(stop) == 1 and stop[0]["delta"]["stop_reason"] == "end_turn"
    with c.messages.stream(model="tiny-llama", max_tokens=200, extra_body={"mcp": True},
                           messages=[{"role": "user", "content": "SCRIPT:mcp_add"}]) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == kinds


def test_responses_tool_loop_through_the_openai_sdk(mserver):
    """Responses: the calls the gateway runs are mcp_call output items (server_label, name,
    arguments, output), streamed with mcp_call events; the stored response continues."""
    assert wait_for(lambda: "local__add" in tools(mserver))
    c = mserver.openai()
    r = c.responses.create(model="tiny-llama", input="SCRIPT:mcp_add", extra_body={"mcp": True})
    kinds = [o.type for o in r.output]
    assert kinds == ["message", "mcp_call", "message", "mcp_call", "message"], kinds
    first = r.output[1]
    assert (first.server_label, first.name, first.output, first.error) == ("local", "add", "42", None)
    assert json.loads(first.arguments) == {"a": 2, "b": 40} and r.output_text.endswith("The answer is 42.")
    assert r.status == "completed" and r.usage.output_tokens > 0

    with c.responses.stream(model="tiny-llama", input="SCRIPT:mcp_add", extra_body={"mcp": True}) as s:
        events = list(s)
        final = s.get_final_response()
    names = [e.type for e in events]
    assert names.count("response.mcp_call.completed") == 2 and names.count("response.mcp_call_arguments.done") == 2
    assert [o.type for o in final.output] == kinds and final.output[3].output == "forty-two"
    indexes = [e.output_index for e in events if e.type == "response.output_item.added"]
    assert indexes == list(range(5))
    # the stored response, mcp_call items included, is a conversation the next request continues
    nxt = c.responses.create(model="tiny-llama", input="thanks", previous_response_id=r.id, max_output_tokens=4)
    assert nxt.status in ("completed", "incomplete")
