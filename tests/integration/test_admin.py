"""Admin API: off without a key, auth, model list, per-model settings applied as defaults."""
import json

import httpx
import pytest

from tests.conftest import Server


def test_admin_off_without_an_admin_key(tiny_model, tmp_path):
    """An inference API key alone never opens the admin port."""
    s = Server(["--model", str(tiny_model), "--embedding-model", "none"], tmp_path).wait_ready()
    try:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{s.admin_port}/admin/models", timeout=3)
    finally:
        s.stop()


def test_settings_round_trip_validation_and_defaults(tiny_model, tmp_path):
    s = Server(["--model", str(tiny_model), "--admin-key", "adm", "--embedding-model", "none"], tmp_path).wait_ready()
    base = f"http://127.0.0.1:{s.admin_port}/admin"
    hdr = {"x-admin-key": "adm"}
    try:
        assert httpx.get(base + "/models", headers={"x-admin-key": "nope"}).status_code == 401
        models = httpx.get(base + "/models", headers=hdr).json()["data"]
        assert [m["id"] for m in models] == ["tiny-llama"] and models[0]["loaded"]
        r = httpx.put(base + "/models/tiny-llama/settings", headers=hdr,
                      json={"temperature": 0, "max_tokens": 3, "model_alias": "tiny", "is_default": True})
        assert r.status_code == 200 and r.json()["settings"]["model_alias"] == "tiny"
        for bad, field in (({"temperature": 9}, "temperature"), ({"top_k": "x"}, "top_k"), ({"nope": 1}, "nope"),
                           ({"kv_bits": 5}, "kv_bits")):
            r = httpx.put(base + "/models/tiny-llama/settings", headers=hdr, json=bad)
            assert r.status_code == 400 and r.json()["error"]["param"] == field
        saved = json.loads((tmp_path / "model_settings.json").read_text())
        assert saved["tiny-llama"]["max_tokens"] == 3
        c = s.openai()
        a = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                      extra_body={"ignore_eos": True})
        b = c.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}],
                                      extra_body={"ignore_eos": True})
        assert a.model == "tiny-llama" and a.usage.completion_tokens == 3  # max_tokens default applied
        assert a.choices[0].message.content == b.choices[0].message.content  # temperature 0 default applied
        r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                      extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 5  # the request still wins
    finally:
        s.stop()


def test_load_and_unload_through_admin(tiny_model, tiny_long, tmp_path):
    s = Server(["--model", str(tiny_model), "--admin-key", "adm", "--embedding-model", "none",
                "--health-interval", "0.3"], tmp_path).wait_ready()
    base = f"http://127.0.0.1:{s.admin_port}/admin"
    hdr = {"authorization": "Bearer adm"}
    try:
        c = s.openai()
        r = httpx.post(base + "/models/load", headers=hdr, json={"model": str(tiny_long)}, timeout=120)
        assert r.status_code == 200 and r.json() == {"id": "tiny-long", "loaded": True}
        assert {m.id for m in c.models.list().data} == {"tiny-llama", "tiny-long"}
        assert c.chat.completions.create(model="tiny-long", messages=[{"role": "user", "content": "x"}],
                                         max_tokens=2).usage.completion_tokens >= 1
        r = httpx.post(base + "/models/unload", headers=hdr, json={"model": "tiny-long"})
        assert r.json() == {"id": "tiny-long", "loaded": False}
        assert "tiny-long" not in s.health()["health"]["models"]  # out of memory, still servable:
        assert c.chat.completions.create(model="tiny-long", messages=[{"role": "user", "content": "x"}],
                                         max_tokens=2).usage.completion_tokens >= 1  # loaded again on demand
        assert httpx.post(base + "/models/load", headers=hdr, json={"model": "/no/such/model"}).status_code == 404
        assert httpx.post(base + "/models/unload", headers=hdr, json={"model": "nope"}).status_code == 404
        assert httpx.post(base + "/models/load", headers=hdr, json={}).status_code == 400
    finally:
        s.stop()


def test_out_of_range_settings_refused_by_the_api_and_skipped_from_the_file(tiny_model, tmp_path):
    """seed 2e70 or a 2e70 context window once hung or crashed the worker: the API refuses them,
    and written into model_settings.json by hand they are skipped at start with a warning."""
    (tmp_path / "model_settings.json").write_text(json.dumps(
        {"tiny-llama": {"seed": 2 * 10**70, "max_context_window": 2 * 10**70, "temperature": "hot", "max_tokens": 3}}))
    s = Server(["--model", str(tiny_model), "--admin-key", "adm", "--embedding-model", "none"], tmp_path).wait_ready()
    base = f"http://127.0.0.1:{s.admin_port}/admin"
    try:
        for bad in ({"seed": 2 * 10**70}, {"max_context_window": 2 * 10**70}):
            r = httpx.put(base + "/models/tiny-llama/settings", headers={"x-admin-key": "adm"}, json=bad)
            assert r.status_code == 400 and r.json()["error"]["param"] == next(iter(bad))
        log = s.log_path.read_text()
        for key in ("seed", "max_context_window", "temperature"):
            assert f"skipping tiny-llama.{key}" in log
        r = s.openai().chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                               extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 3  # the good value in the same file still applies
        assert s.health()["worker"]["restarts"] == 0
    finally:
        s.stop()


def test_turboquant_per_model_kv_bits_applied_by_the_worker(tmp_path):
    """PUT /admin/api/turboquant sets a model's kv_bits; the worker's next decode path for it
    holds quantized KV (its batch reports the bits) and answers as before; null clears it."""
    from tests.fixtures.tiny_models import TINY_LLAMA, build_tiny_llama

    wide = build_tiny_llama(tmp_path / "models" / "tiny-wide", seed=3,
                            cfg={**TINY_LLAMA, "hidden_size": 128, "num_attention_heads": 2,
                                 "num_key_value_heads": 1, "head_dim": 64})
    s = Server(["--model", str(wide), "--admin-key", "adm", "--embedding-model", "none"], tmp_path / "d").wait_ready()
    base = f"http://127.0.0.1:{s.admin_port}/admin/api/turboquant"
    hdr = {"x-admin-key": "adm"}
    try:
        tq = httpx.get(base, headers=hdr).json()
        row = tq["models"][0]
        assert tq["enabled"] is False and row["kv_bits"] == 0 and row["recommended"]["kv_bits"] in (0, 2, 3, 4, 6, 8)
        c = s.openai()
        ask = dict(model="tiny-wide", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0,
                   extra_body={"ignore_eos": True})
        plain = c.chat.completions.create(**ask).choices[0].message.content
        r = httpx.put(base, headers=hdr, json={"model": "tiny-wide", "kv_bits": 8})
        assert r.status_code == 200 and r.json()["models"][0]["kv_bits"] == 8
        assert r.json()["models"][0]["bytes_per_token"] < r.json()["models"][0]["plain_bytes_per_token"]
        quant = c.chat.completions.create(**ask)
        assert quant.usage.completion_tokens == 6
        assert s.stats()["engine"]["batches"]["tiny-wide"]["kv_bits"] == 8
        assert httpx.put(base, headers=hdr, json={"model": "tiny-wide", "kv_bits": 5}).status_code == 400
        r = httpx.put(base, headers=hdr, json={"model": "tiny-wide", "kv_bits": None})
        assert r.json()["models"][0]["kv_bits"] == 0
        assert c.chat.completions.create(**ask).choices[0].message.content == plain
    finally:
        s.stop()
