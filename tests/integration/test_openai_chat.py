"""Chat completions through the real gateway + worker, with the strict official SDK."""
import pytest

MSG = [{"role": "user", "content": "Tell me a story about a robot."}]


def test_models_list(server, client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["tiny-llama", "all-minilm-l6-v2"]  # the LLM, then the default embedding model
    assert client.models.retrieve("tiny-llama").id == "tiny-llama"


def test_chat_non_streaming(client):
    r = client.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=12, temperature=0)
    assert r.object == "chat.completion"
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content
    assert c.finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens > 10
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(client):
    full = client.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=16, temperature=0)
    stream = client.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert text == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens


def test_max_completion_tokens_and_length(client):
    r = client.chat.completions.create(model="tiny-llama", messages=MSG, max_completion_tokens=3, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3
    assert r.choices[0].finish_reason == "length"


def test_seed_reproducible_and_temperature_varies(client):
    kw = dict(model="tiny-llama", messages=MSG, max_tokens=20, temperature=1.0, extra_body={"ignore_eos": True})
    a = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    c = client.chat.completions.create(seed=99, **kw).choices[0].message.content
    assert a == b
    assert a != c


@pytest.mark.parametrize("params", [
    {"top_p": 0.5}, {"extra_body": {"top_k": 5}}, {"extra_body": {"min_p": 0.2}},
    {"frequency_penalty": 1.5}, {"presence_penalty": 1.5}, {"extra_body": {"repetition_penalty": 1.3}},
])
def test_each_sampling_parameter_is_accepted_and_applied(client, params):
    extra = {"ignore_eos": True, **params.pop("extra_body", {})}
    base = dict(model="tiny-llama", messages=MSG, max_tokens=24, temperature=0.8, seed=7)
    plain = client.chat.completions.create(**base, extra_body={"ignore_eos": True}).choices[0].message.content
    r = client.chat.completions.create(**base, **params, extra_body=extra)
    assert r.usage.completion_tokens == 24
    again = client.chat.completions.create(**base, **params, extra_body=extra)
    assert r.choices[0].message.content == again.choices[0].message.content  # seeded -> reproducible
    assert r.choices[0].message.content != plain  # the parameter changed the distribution


def test_greedy_penalties_change_output(client):
    base = dict(model="tiny-llama", messages=MSG, max_tokens=30, temperature=0, extra_body={"ignore_eos": True})
    plain = client.chat.completions.create(**base).choices[0].message.content
    pen = client.chat.completions.create(**base, frequency_penalty=2.0).choices[0].message.content
    assert plain != pen


def test_stop_string_cuts_output(client):
    base = dict(model="tiny-llama", messages=MSG, max_tokens=40, temperature=0, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**base).choices[0].message.content
    assert len(full) > 20
    # A stop string spanning token boundaries, taken from the middle of the greedy output.
    stop = full[10:16]
    cut = client.chat.completions.create(**base, stop=[stop, "\u0000never"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]
    # Streaming applies the same rule across chunk boundaries.
    text = ""
    for chunk in client.chat.completions.create(**base, stop=stop, stream=True):
        for ch in chunk.choices:
            text += ch.delta.content or ""
    assert text == full[: full.index(stop)]
    assert stop not in text


def test_logprobs_shape(client):
    r = client.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=5, temperature=0,
                                       logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
        assert isinstance(entry.bytes, list)
    assert "".join(bytes(e.bytes).decode("utf-8", "replace") for e in content) == r.choices[0].message.content


def test_logprobs_streaming(client):
    stream = client.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=4, temperature=0,
                                            logprobs=True, top_logprobs=2, stream=True,
                                            extra_body={"ignore_eos": True})
    entries = [e for chunk in stream for ch in chunk.choices if ch.logprobs and ch.logprobs.content
               for e in ch.logprobs.content]
    assert len(entries) == 4 and all(len(e.top_logprobs) == 2 for e in entries)


def test_n_choices(client):
    r = client.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=8, temperature=1.0, n=3,
                                       seed=5, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1
    assert r.usage.completion_tokens == 24
    stream = client.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=4, n=2, stream=True,
                                            extra_body={"ignore_eos": True})
    finishes = {ch.index: ch.finish_reason for chunk in stream for ch in chunk.choices if ch.finish_reason}
    assert finishes == {0: "length", 1: "length"}


def test_system_and_multi_turn_and_content_parts(client):
    r = client.chat.completions.create(model="tiny-llama", max_tokens=4, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "developer", "content": "Be nice."},
        {"role": "user", "content": "Again?"},
    ])
    assert r.usage.prompt_tokens > 20
