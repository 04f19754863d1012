"""Raw SSE framing, checked byte by byte with httpx."""
import json

import httpx


def sse_events(server, path, body):
    with httpx.stream("POST", server.base_url + path, json=body, headers=server.headers, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(r.iter_bytes())
    assert raw.endswith(b"data: [DONE]\n\n")
    blocks = raw.decode().split("\n\n")
    assert blocks[-1] == ""
    datas = []
    for block in blocks[:-1]:
        assert block.startswith("data: "), block
        datas.append(block[len("data: "):])
    assert datas[-1] == "[DONE]"
    return [json.loads(d) for d in datas[:-1]]


CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6,
        "stream": True, "ignore_eos": True}


def test_chat_sse_roles_finish_and_no_usage_by_default(server):
    chunks = sse_events(server, "/v1/chat/completions", CHAT)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and finishes[0] is chunks[-1]
    assert all("usage" not in c or c["usage"] is None for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_chat_sse_usage_only_with_include_usage(server):
    chunks = sse_events(server, "/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}})
    with_usage = [c for c in chunks if c.get("usage")]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    assert all(c["usage"] is None for c in chunks[:-1])


def test_completions_sse(server):
    chunks = sse_events(server, "/v1/completions", {"model": "tiny-llama", "prompt": "hi", "max_tokens": 4,
                                                    "stream": True, "ignore_eos": True})
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])  # raw clients get OpenAI's exact wire
    assert all(c["object"] == "text_completion" for c in chunks)
