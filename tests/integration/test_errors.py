"""Bad input gets the right status and an OpenAI error body; never a traceback or a hang."""
import httpx
import openai
import pytest

from tests.conftest import API_KEY


def post(server, path, body=None, content=None, headers=None):
    h = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json", **(headers or {})}
    return httpx.post(server.base_url + path, json=body, content=content, headers=h, timeout=60)


def assert_openai_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param
    return err


CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_malformed_json(server):
    assert_openai_error(post(server, "/v1/chat/completions", content=b'{"model": "tiny-llama", "messages": ['), 400)


def test_wrong_content_type(server):
    r = post(server, "/v1/chat/completions", content=b"model=x", headers={"content-type": "application/x-www-form-urlencoded"})
    assert_openai_error(r, 415)


def test_missing_and_wrong_typed_fields(server):
    assert_openai_error(post(server, "/v1/chat/completions", {"model": "tiny-llama"}), 400, "messages")
    assert_openai_error(post(server, "/v1/chat/completions", {**CHAT, "max_tokens": "ten"}), 400, "max_tokens")
    assert_openai_error(post(server, "/v1/chat/completions", {**CHAT, "temperature": 7}), 400, "temperature")
    assert_openai_error(post(server, "/v1/chat/completions", {**CHAT, "messages": [{"content": "x"}]}), 400)
    assert_openai_error(post(server, "/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}), 400)
    assert_openai_error(post(server, "/v1/completions", {"model": "tiny-llama"}), 400, "prompt")
    assert_openai_error(post(server, "/v1/completions", {"model": "tiny-llama", "prompt": [1.5]}), 400, "prompt")


def test_empty_messages(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=[])
    assert e.value.body["param"] == "messages"


def test_unknown_model_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.parametrize("value", [0, -5])
def test_max_tokens_zero_or_negative(client, value):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}], max_tokens=value)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-llama", prompt="x", max_tokens=value)


def test_prompt_longer_than_context(server, client):
    long = "word " * 800  # the tiny model's window is 512 tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": long}])
    assert e.value.code == "context_length_exceeded"
    # Streaming: the error comes as a 400 before any SSE byte.
    r = post(server, "/v1/chat/completions", {"model": "tiny-llama", "stream": True,
                                              "messages": [{"role": "user", "content": long}]})
    assert_openai_error(r, 400)
    assert r.headers["content-type"].startswith("application/json")
    # Prompt fits but prompt + max_tokens does not.
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-llama", prompt="word " * 300, max_tokens=400)


def test_n_out_of_range(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}], n=100)
    assert e.value.body["param"] == "n"


def test_unknown_route_and_method(server):
    r = httpx.get(server.base_url + "/v1/nope", headers=server.headers)
    assert_openai_error(r, 404)
    r = httpx.get(server.base_url + "/v1/chat/completions", headers=server.headers)
    assert_openai_error(r, 405)


def test_image_on_text_model(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])


def test_server_still_serves_after_errors(client):
    r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert r.choices[0].message.content is not None
