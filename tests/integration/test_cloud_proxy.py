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
