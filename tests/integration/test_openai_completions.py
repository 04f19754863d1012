"""Legacy text completions: plain, streaming, logprobs, echo, token prompts, batches."""
import pytest

PROMPT = "The old lighthouse keeper"


def test_completion_basic(client):
    r = client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=10, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 10
    assert r.usage.prompt_tokens == 4  # "The| old| lighthouse| keeper"


def test_default_max_tokens_is_16(client):
    r = client.completions.create(model="tiny-llama", prompt=PROMPT, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_completion_streaming_equals_non_streaming(server):
    client = server.openai(strict=False)  # OpenAI's wire: finish_reason null until the last chunk
    kw = dict(model="tiny-llama", prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full
    assert chunks[-1].usage.completion_tokens == 12
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length" and set(reasons[:-1]) == {None}


def test_logprobs_and_echo(server):
    client = server.openai(strict=False)  # OpenAI's wire: the echoed first token's logprob is null
    r = client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2,
                                  echo=True, extra_body={"ignore_eos": True})
    c = r.choices[0]
    lp = c.logprobs
    assert c.text.startswith(PROMPT)
    n = 4 + 3
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # as OpenAI sends them
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert all(len(t) == 2 for t in lp.top_logprobs[1:])
    assert "".join(lp.tokens) == c.text
    assert lp.text_offset == sorted(lp.text_offset)
    # Greedy generated tokens are the top alternative.
    for tok, val, top in zip(lp.tokens[4:], lp.token_logprobs[4:], lp.top_logprobs[4:]):
        assert max(top.values()) == pytest.approx(val, abs=1e-4)


def test_echo_without_logprobs(client):
    r = client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=2, echo=True)
    assert r.choices[0].text.startswith(PROMPT)


def test_token_prompt_and_batch(client):
    r = client.completions.create(model="tiny-llama", prompt=[[504, 1330, 4236], [42, 43]], max_tokens=4,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.prompt_tokens == 5
    r = client.completions.create(model="tiny-llama", prompt=["a", "b", "c"], max_tokens=2, n=2)
    assert len(r.choices) == 6


def test_completion_stop(client):
    kw = dict(model="tiny-llama", prompt=PROMPT, max_tokens=30, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    stop = full[8:13]
    r = client.completions.create(stop=stop, **kw)
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
