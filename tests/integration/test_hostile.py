"""Hostile and careless requests: each gets a clear answer in its route's shape (a result or a
4xx), within a time limit, and never restarts the worker; a poison request is not replayed."""
import concurrent.futures as cf
import json
import time

import httpx
import openai
import pytest

from tests.conftest import Server

EMB = "all-minilm-l6-v2"
HI = [{"role": "user", "content": "hi"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

CASES = [
    # (path, body, acceptable statuses)
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 3, "top_k": 49152}, {200}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 3, "top_k": 10**9}, {200}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 3, "seed": -1}, {200}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 3, "seed": 2**64 - 1}, {200}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 3, "seed": 2**64}, {400}),
    ("/v1/completions", {"prompt": "x", "max_tokens": 3, "seed": -1, "top_k": 60000}, {200}),
    ("/v1/messages", {"messages": HI, "max_tokens": 3, "top_k": 10**6}, {200}),
    ("/v1/messages", {"messages": HI, "max_tokens": 10**70}, {200, 400}),
    ("/v1/messages", {"messages": HI, "max_tokens": 3, "thinking": {"type": "enabled", "budget_tokens": "9"}}, {400}),
    ("/v1/messages", {"messages": HI, "max_tokens": 3, "tool_choice": {"type": "tool", "name": 7},
                      "tools": [{"name": "f", "input_schema": {}}]}, {400}),
    ("/v1/messages", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": 5}]}], "max_tokens": 3}, {400}),
    ("/v1/messages", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": ["a", "b"]}]}], "max_tokens": 3}, {200}),
    ("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": 5}]}]}, {400}),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {**CALL, "function": {"name": 7, "arguments": "{}"}}]}, *HI], "max_tokens": 3}, {400}),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {**CALL, "function": {"name": "f", "arguments": {"a": 1}}}]}, *HI], "max_tokens": 3}, {200}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 3, "tool_choice": "f",
                              "tools": [{"type": "function", "function": {"name": "f"}}]}, {400}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 3, "tool_choice": {"type": "function",
                              "function": {"name": 5}}, "tools": [{"type": "function", "function": {"name": "f"}}]},
     {400}),
    ("/v1/responses", {"input": HI, "max_output_tokens": 3, "temperature": 5}, {400}),
    ("/v1/responses", {"input": HI, "max_output_tokens": 3, "temperature": -1}, {400}),
    ("/v1/responses", {"input": HI, "max_output_tokens": 3, "top_p": 5}, {400}),
    ("/v1/responses", {"input": HI, "max_output_tokens": 10**70}, {200, 400}),
    ("/v1/responses", {"input": [{"role": "user", "content": 5}], "max_output_tokens": 3}, {400}),
    ("/v1/responses", {"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, {400}),
    ("/v1/responses", {"input": "x", "text": {"format": "json"}}, {400}),
    ("/v1/responses", {"input": "x", "tools": [{"type": "function", "parameters": {}}]}, {400}),
    ("/v1/responses", {"input": [{"type": "function_call", "name": 5, "call_id": "c", "arguments": "{}"}]}, {400}),
    ("/v1/responses", {"input": [{"type": "function_call", "name": "f", "call_id": "c", "arguments": {"a": 1}},
                                 {"type": "function_call_output", "call_id": "c", "output": 5}]}, {400}),
    ("/v1/embeddings", {"model": EMB, "input": [[101, 30522, 102]]}, {400}),
    ("/v1/embeddings", {"model": EMB, "input": [[101, 100000, 102]]}, {400}),
    ("/v1/embeddings", {"model": EMB, "input": [[101, -1, 102]]}, {400}),
    # per-request caps, before any model work
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * (9 * 1024**2)}]}, {413}),
    ("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": "x" * (9 * 1024**2)}]}, {413}),
    ("/v1/responses", {"input": "x" * (9 * 1024**2)}, {413}),
    ("/v1/embeddings", {"model": EMB, "input": ["x" * (3 * 1024**2)] * 3}, {413}),
    ("/v1/embeddings", {"model": EMB, "input": ["x"] * 2049}, {400}),
    ("/v1/rerank", {"model": EMB, "query": "q", "documents": ["d"] * 10001}, {400}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 3, "tools": [
        {"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, {400}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 3, "tools": [
        {"type": "function", "function": {"name": "f", "description": "d" * (3 * 1024**2)}}]}, {413}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 3, "chat_template_kwargs": {"tools": []}}, {400}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 3,
                              "chat_template_kwargs": {"add_generation_prompt": False}}, {400}),
]


@pytest.mark.parametrize("path,body,ok", CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_hostile_request_answered_without_restart(server, path, body, ok):
    before = server.health()["worker"]["restarts"]
    r = httpx.post(server.base_url + path, headers=server.headers, json={"model": "tiny-llama", **body}, timeout=30)
    assert r.status_code in ok, r.text
    if r.status_code >= 400:
        err = r.json()
        shape = err["error"]["type"] if path.startswith("/v1/messages") else err["error"]["message"]
        assert shape and r.status_code < 500
    assert server.health()["worker"]["restarts"] == before
    assert "Traceback" not in server.log_path.read_text()[-20000:]


def test_admin_paths_that_are_no_model(tiny_model, tmp_path):
    s = Server(["--model", str(tiny_model), "--admin-key", "adm"], tmp_path / "d", keys=()).wait_ready()
    base = f"http://127.0.0.1:{s.admin_port}/admin"
    hdr = {"x-admin-key": "adm"}
    (tmp_path / "plain.txt").write_text("not a model")
    (tmp_path / "empty").mkdir()
    try:
        for spec in ("/dev/zero", str(tmp_path / "plain.txt"), str(tmp_path / "empty"), "../../..", "/etc"):
            r = httpx.post(base + "/models/load", headers=hdr, json={"model": spec}, timeout=30)
            assert r.status_code == 404, (spec, r.text)
        # an alias that already names another model (here the embedding model) would hide it
        r = httpx.put(base + "/models/tiny-llama/settings", headers=hdr, json={"model_alias": EMB})
        assert r.status_code == 409 and r.json()["error"]["param"] == "model_alias"
        assert httpx.put(base + "/models/tiny-llama/settings", headers=hdr, json={"model_alias": "t"}).status_code == 200
        assert s.health()["worker"]["restarts"] == 0
    finally:
        s.stop()


def test_delete_refuses_dot_dot_paths_outside_the_data_dir(tiny_model, tmp_path):
    """A model registered through `<data_dir>/models/../../elsewhere` resolves outside: never deleted."""
    import shutil

    outside = tmp_path / "elsewhere" / "tiny-copy"
    shutil.copytree(tiny_model, outside)
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    s = Server(["--model", str(tiny_model), "--admin-key", "adm", "--embedding-model", "none"], data,
               keys=()).wait_ready()
    base = f"http://127.0.0.1:{s.admin_port}/admin"
    hdr = {"x-admin-key": "adm"}
    try:
        spelled = f"{data}/models/../../elsewhere/tiny-copy"
        r = httpx.post(base + "/models/load", headers=hdr, json={"model": spelled}, timeout=60)
        assert r.status_code == 200, r.text
        r = httpx.delete(base + "/models/tiny-copy", headers=hdr)
        assert r.status_code == 400 and r.json()["error"]["code"] == "not_deletable"
        assert (outside / "config.json").exists()
    finally:
        s.stop()


def test_poison_request_is_not_replayed(tiny_long, tmp_path):
    """One request kills the worker while 8 streams run: it fails with a 500-class error and is
    not replayed; requests that had not started complete on the new worker; one restart."""
    s = Server(["--model", str(tiny_long), "--embedding-model", "none"], tmp_path, keys=(),
               env={"NOVAMLX_FAULT": "crash_on_text:POISON-PILL"}).wait_ready()
    try:
        c = s.openai(timeout=120)

        def stream():
            try:
                n = 0
                for chunk in c.chat.completions.create(model="tiny-long", messages=HI, max_tokens=3000, stream=True,
                                                       extra_body={"ignore_eos": True}):
                    n += 1
                return n
            except openai.APIError as e:
                return e

        with cf.ThreadPoolExecutor(16) as pool:
            streams = [pool.submit(stream) for _ in range(8)]
            time.sleep(1.0)  # the streams are decoding
            poison = pool.submit(lambda: c.chat.completions.create(
                model="tiny-long", messages=[{"role": "user", "content": "POISON-PILL"}], max_tokens=4))
            time.sleep(0.5)  # the poison reaches the worker first (a later request it overtook would be cut)
            later = [pool.submit(lambda: c.chat.completions.create(model="tiny-long", messages=HI, max_tokens=4))
                     for _ in range(3)]
            with pytest.raises(openai.InternalServerError) as e:
                poison.result(timeout=120)
            assert e.value.status_code == 500 and "not retried" in e.value.message
            for f in later:
                assert f.result(timeout=120).usage.completion_tokens >= 1
            for f in streams:
                f.result(timeout=120)  # each ends: an error for a stream cut by the crash, never a hang
        h = s.health()
        assert h["worker"]["restarts"] == 1 and h["status"] == "ok"
        again = c.chat.completions.create(model="tiny-long", messages=HI, max_tokens=3)
        assert again.usage.completion_tokens >= 1 and s.health()["worker"]["restarts"] == 1
    finally:
        s.stop()


def test_cors_only_for_local_origins_and_host_checked(server):
    url = server.base_url + "/v1/models"
    pre = {"access-control-request-method": "POST", "access-control-request-headers": "authorization"}
    local = httpx.options(url, headers={"origin": "http://localhost:3000", **pre})
    assert local.headers.get("access-control-allow-origin") == "http://localhost:3000"
    evil = httpx.options(url, headers={"origin": "https://evil.example", **pre})
    assert "access-control-allow-origin" not in evil.headers
    got = httpx.get(url, headers={**server.headers, "origin": "https://evil.example"})
    assert "access-control-allow-origin" not in got.headers
    rebound = httpx.get(url, headers={**server.headers, "host": "evil.example:6590"})
    assert rebound.status_code == 421 and rebound.json()["error"]["code"] == "invalid_host"
    assert httpx.get(url, headers={**server.headers, "host": "localhost:1"}).status_code == 200


def test_cors_origin_opt_in(tiny_model, tmp_path):
    s = Server(["--model", str(tiny_model), "--embedding-model", "none", "--cors-origin", "https://app.example"],
               tmp_path, keys=()).wait_ready()
    try:
        r = httpx.get(s.base_url + "/v1/models", headers={"origin": "https://app.example"})
        assert r.headers.get("access-control-allow-origin") == "https://app.example"
    finally:
        s.stop()


def test_health_counts_rejected_requests_by_kind(server):
    before = server.health()["requests"]["rejected_by_kind"].get("invalid_json", 0)
    r = httpx.post(server.base_url + "/v1/chat/completions", headers={**server.headers, "content-type": "application/json"},
                   content=b'{"model": "tiny-llama", "messages": [], "tools": [' + b'{"a": ' * 100000 + b"1"
                   + b"}" * 100000 + b"]}")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert server.health()["requests"]["rejected_by_kind"]["invalid_json"] == before + 1
