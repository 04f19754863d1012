"""API keys, CORS, request ids, body limit."""
import httpx
import openai
import pytest


def test_missing_and_wrong_key_401(server):
    from openai import OpenAI

    for key in ("wrong-key",):
        c = OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, _strict_response_validation=True)
        with pytest.raises(openai.AuthenticationError) as e:
            c.models.list()
        assert e.value.body["code"] == "invalid_api_key"
    r = httpx.get(server.base_url + "/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.base_url + "/v1/models", headers={"authorization": "Bearer sk-test-kez"}).status_code == 401
    assert httpx.get(server.base_url + "/v1/models", headers=server.headers).status_code == 200


def test_health_is_public(server):
    assert httpx.get(server.base_url + "/health").status_code == 200


def test_request_id_echoed_or_generated(server):
    r = httpx.get(server.base_url + "/v1/models", headers={**server.headers, "x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.get(server.base_url + "/v1/models", headers=server.headers)
    assert r.headers["x-request-id"].startswith("req_")


def test_cors(server):
    """Local pages may call the API from a browser; other origins only when configured
    (test_hostile.py checks the refusal and the opt-in)."""
    r = httpx.options(server.base_url + "/v1/chat/completions", headers={
        "origin": "http://127.0.0.1:8080", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
    r = httpx.get(server.base_url + "/v1/models", headers={**server.headers, "origin": "http://localhost:5173"})
    assert r.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_body_limit_413(tiny_model, tmp_path):
    from tests.conftest import Server

    s = Server(["--model", str(tiny_model), "--max-request-size-mb", "0.01"], tmp_path, keys=()).wait_ready()
    try:
        big = {"model": "tiny-llama", "messages": [{"role": "user", "content": "x" * 20000}]}
        r = httpx.post(s.base_url + "/v1/chat/completions", json=big, timeout=30)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"
        # Chunked upload without a content-length is counted too.
        def gen():
            yield b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "'
            for _ in range(30):
                yield b"x" * 1000
            yield b'"}]}'
        r = httpx.post(s.base_url + "/v1/chat/completions", content=gen(),
                       headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 413
    finally:
        s.stop()
