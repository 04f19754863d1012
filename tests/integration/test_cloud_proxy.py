"""Cloud models: a second NovaMLX server stands in for the remote OpenAI-compatible endpoint."""
import openai
import pytest

from tests.conftest import Server, free_port


def test_cloud_model_listed_and_passed_through(tiny_model, tmp_path):
    up = Server(["--model", str(tiny_model), "--embedding-model", "none"], tmp_path / "up", keys=("sk-up",)).wait_ready()
    dead = free_port()
    s = Server(["--model", str(tiny_model), "--embedding-model", "none",
                "--cloud-model", f"id=remote-tiny,url={up.base_url}/v1,model=tiny-llama,key_env=UPSTREAM_KEY",
                "--cloud-model", f"id=gone,url=http://127.0.0.1:{dead}/v1"],
               tmp_path / "local", keys=(), env={"UPSTREAM_KEY": "sk-up"}).wait_ready()
    try:
        c = s.openai()
        assert {"tiny-llama", "remote-tiny", "gone"} <= {m.id for m in c.models.list().data}
        kw = dict(messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
        local = c.chat.completions.create(model="tiny-llama", **kw).choices[0].message.content
        remote = c.chat.completions.create(model="remote-tiny", **kw)
        assert remote.choices[0].message.content == local  # same weights upstream
        streamed = "".join(ch.delta.content or "" for chunk in c.chat.completions.create(model="remote-tiny", stream=True, **kw)
                           for ch in chunk.choices)
        assert streamed == local
        assert c.completions.create(model="remote-tiny", prompt="Once", max_tokens=3).choices[0].text is not None
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="gone", **kw)
        assert e.value.status_code == 502
    finally:
        s.stop()
        up.stop()


def test_cloud_model_on_messages_and_responses(tiny_model, tmp_path):
    """Translated to the remote's chat completions (streaming too), or passed through when the
    remote speaks the API itself (native=...): the answer equals the local model's."""
    import anthropic

    up = Server(["--model", str(tiny_model), "--embedding-model", "none"], tmp_path / "up", keys=("sk-up",)).wait_ready()
    s = Server(["--model", str(tiny_model), "--embedding-model", "none",
                "--cloud-model", f"id=remote-tiny,url={up.base_url}/v1,model=tiny-llama,key_env=UPSTREAM_KEY",
                "--cloud-model", f"id=native-tiny,url={up.base_url}/v1,model=tiny-llama,key_env=UPSTREAM_KEY,"
                                 "native=messages+responses"],
               tmp_path / "local", keys=(), env={"UPSTREAM_KEY": "sk-up"}).wait_ready()
    try:
        a = anthropic.Anthropic(base_url=s.base_url, api_key="none", max_retries=0, _strict_response_validation=True)
        kw = dict(max_tokens=6, messages=[{"role": "user", "content": "hi"}], extra_body={"temperature": 0})
        local = a.messages.create(model="tiny-llama", **kw)
        for model in ("remote-tiny", "native-tiny"):
            remote = a.messages.create(model=model, **kw)
            assert remote.content[0].text == local.content[0].text and remote.stop_reason == local.stop_reason
            assert remote.usage.output_tokens == local.usage.output_tokens
            with a.messages.stream(model=model, **kw) as st:
                assert "".join(st.text_stream) == local.content[0].text
        c = s.openai()
        rkw = dict(input="hi", max_output_tokens=6, temperature=0)
        local_r = c.responses.create(model="tiny-llama", **rkw)
        for model in ("remote-tiny", "native-tiny"):
            remote_r = c.responses.create(model=model, **rkw)
            assert remote_r.output_text == local_r.output_text and remote_r.status == local_r.status
            events = list(c.responses.create(model=model, stream=True, **rkw))
            assert events[-1].response.output_text == local_r.output_text
        with pytest.raises(anthropic.NotFoundError):
            a.messages.create(model="no-such-model", **kw)
    finally:
        s.stop()
        up.stop()
