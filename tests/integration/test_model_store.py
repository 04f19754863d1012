"""The model store: discovery (data dir + HF cache), load on demand, TTL, pinning, context
window, deletion, and hub search/download (progress, cancel, resume) against a fake hub."""
import json
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, Server
from tests.fixtures.fake_hub import FakeHub

ADMIN = {"authorization": "Bearer adm"}


def _ask(s, prompt="hello there", model="tiny-llama", **kw):
    r = s.openai().chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           temperature=0, max_tokens=kw.pop("max_tokens", 6), **kw)
    return r.choices[0].message.content


def _admin_models(s) -> dict:
    return {m["id"]: m for m in httpx.get(f"http://127.0.0.1:{s.admin_port}/admin/models", headers=ADMIN).json()["data"]}


def _wait(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_discovery_on_demand_ttl_pin_window_and_delete(tiny_model, tiny_long, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_long, data / "models" / "acme" / "tiny-two")
    snap = data / "hf-cache" / "models--hf-org--tiny-cached" / "snapshots" / "abc123"
    shutil.copytree(tiny_model, snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    (data / "models" / "not-a-model").mkdir()
    (data / "models" / "not-a-model" / "config.json").write_text(json.dumps({"model_type": "nonesuch"}))
    s = Server(["--model", str(tiny_model), "--admin-key", "adm", "--embedding-model", "none"], data).wait_ready()
    base = f"http://127.0.0.1:{s.admin_port}/admin"
    try:
        c = s.openai()
        assert {m.id for m in c.models.list().data} == {"tiny-llama", "tiny-two", "hf-org/tiny-cached"}
        listed = _admin_models(s)
        assert not listed["tiny-two"]["loaded"] and listed["tiny-two"]["source"] == "data_dir"
        assert listed["hf-org/tiny-cached"]["source"] == "hf_cache" and listed["tiny-two"]["size_bytes"] > 0
        # load on demand; the HF-cache copy has the same weights as tiny-llama, so the same answer
        assert _ask(s, model="hf-org/tiny-cached") == _ask(s)
        assert _admin_models(s)["hf-org/tiny-cached"]["loaded"]

        # a folder added while running appears after discover
        shutil.copytree(tiny_long, data / "models" / "late-one")
        r = httpx.post(base + "/models/discover", headers=ADMIN)
        assert r.status_code == 200 and r.json()["added"] == ["late-one"]
        assert _ask(s, model="late-one")

        # ttl unloads an idle model; a pinned one stays
        for mid, extra in (("late-one", {}), ("tiny-two", {"is_pinned": True})):
            assert httpx.put(f"{base}/models/{mid}/settings", headers=ADMIN,
                             json={"ttl_seconds": 1, **extra}).status_code == 200
        assert _ask(s, model="tiny-two")
        assert _wait(lambda: not _admin_models(s)["late-one"]["loaded"], 15)
        assert _admin_models(s)["tiny-two"]["loaded"]
        assert _ask(s, model="late-one")  # and it comes back on demand

        # max_context_window caps the window below the model's own
        httpx.put(f"{base}/models/tiny-llama/settings", headers=ADMIN, json={"max_context_window": 8})
        with pytest.raises(Exception) as err:
            _ask(s, prompt="a much longer prompt than eight tokens can hold, surely")
        assert err.value.status_code == 400 and "maximum context length is 8" in str(err.value)
        httpx.put(f"{base}/models/tiny-llama/settings", headers=ADMIN, json={"max_context_window": None})
        assert _ask(s)

        # delete: files under the data dir or the HF cache only
        r = httpx.delete(base + "/models/tiny-two", headers=ADMIN)
        assert r.status_code == 200 and r.json()["deleted"] and r.json()["freed_bytes"] > 0
        assert not (data / "models" / "acme").exists()
        r = httpx.delete(base + "/models/hf-org/tiny-cached", headers=ADMIN)
        assert r.status_code == 200 and not (data / "hf-cache" / "models--hf-org--tiny-cached").exists()
        assert {m.id for m in c.models.list().data} == {"tiny-llama", "late-one"}
        r = httpx.delete(base + "/models/tiny-llama", headers=ADMIN)
        assert r.status_code == 400 and r.json()["error"]["code"] == "not_deletable" and tiny_model.exists()
        assert httpx.delete(base + "/models/nope", headers=ADMIN).status_code == 404
        with pytest.raises(Exception) as err:
            _ask(s, model="tiny-two")
        assert err.value.status_code == 404
    finally:
        s.stop()


def test_hub_search_download_cancel_resume(tiny_model, tmp_path):
    hub = FakeHub()
    hub.add_folder("acme/tiny-hub", tiny_model, downloads=50, trendingScore=1)
    hub.add_folder("acme/tiny-popular", tiny_model, downloads=900, trendingScore=9)
    hub.add_folder("acme/tiny-torch", tiny_model, downloads=5000, tags=["pytorch"])
    s = Server(["--model", str(tiny_model), "--admin-key", "adm", "--embedding-model", "none"], tmp_path,
               env={"HF_ENDPOINT": hub.url}).wait_ready()
    base = f"http://127.0.0.1:{s.admin_port}/admin/models"
    try:
        r = httpx.get(base + "/search", params={"q": "tiny", "sort": "downloads"}, headers=ADMIN)
        assert [m["id"] for m in r.json()["data"]] == ["acme/tiny-popular", "acme/tiny-hub"]  # MLX only
        r = httpx.get(base + "/search", params={"q": "tiny", "mlx_only": "false", "sort": "downloads"}, headers=ADMIN)
        assert r.json()["data"][0]["id"] == "acme/tiny-torch" and r.json()["data"][0]["downloads"] == 5000
        assert hub.searches[0]["filter"] == ["mlx"] and hub.searches[0]["sort"] == ["downloads"]
        assert httpx.get(base + "/search", params={"sort": "best"}, headers=ADMIN).status_code == 400

        # start, watch progress, cancel mid-file
        hub.throttle = 0.05
        r = httpx.post(base + "/download", headers=ADMIN, json={"repo_id": "acme/tiny-hub"})
        assert r.status_code == 202
        task = r.json()["id"]
        url = f"{base}/downloads/{task}"
        assert _wait(lambda: httpx.get(url, headers=ADMIN).json()["downloaded_bytes"] > 1_500_000)
        st = httpx.get(url, headers=ADMIN).json()
        assert st["status"] == "downloading" and st["total_bytes"] > st["downloaded_bytes"] > 0
        assert {f["name"] for f in st["files"]} >= {"config.json", "model.safetensors"}
        assert httpx.delete(url, headers=ADMIN).json()["status"] == "cancelled"
        parts = list((tmp_path / "models" / "acme" / "tiny-hub").glob("*.part"))
        assert parts and parts[0].stat().st_size > 0
        assert "acme/tiny-hub" not in {m.id for m in s.openai().models.list().data}

        # start again: the partial file resumes with a Range request, then the model is served
        hub.throttle = 0
        r = httpx.post(base + "/download", headers=ADMIN, json={"repo_id": "acme/tiny-hub"})
        url = f"{base}/downloads/{r.json()['id']}"
        assert _wait(lambda: httpx.get(url, headers=ADMIN).json()["status"] in ("completed", "failed"), 60)
        st = httpx.get(url, headers=ADMIN).json()
        assert st["status"] == "completed" and st["progress"] == 1.0 and st["resumed_bytes"] > 0, st
        assert any(int(h.split("=")[1].rstrip("-")) > 0 for h in hub.ranges)
        assert not list((tmp_path / "models" / "acme" / "tiny-hub").glob("*.part"))
        assert _wait(lambda: "acme/tiny-hub" in {m.id for m in s.openai().models.list().data}, 10)
        assert _ask(s, model="acme/tiny-hub") == _ask(s)  # the same weights, the same greedy answer
        listing = httpx.get(base + "/downloads", headers=ADMIN).json()["data"]
        assert [t["status"] for t in listing] == ["cancelled", "completed"]

        # failures are reported on the task / as 400s
        r = httpx.post(base + "/download", headers=ADMIN, json={"repo_id": "acme/missing"})
        url = f"{base}/downloads/{r.json()['id']}"
        assert _wait(lambda: httpx.get(url, headers=ADMIN).json()["status"] == "failed")
        assert "No model 'acme/missing'" in httpx.get(url, headers=ADMIN).json()["error"]
        assert httpx.post(base + "/download", headers=ADMIN, json={"repo_id": "../etc"}).status_code == 400
        assert httpx.post(base + "/download", headers=ADMIN, json={}).status_code == 400
        assert httpx.get(base + "/downloads/dl-nope", headers=ADMIN).status_code == 404
    finally:
        s.stop()
        hub.close()


def test_models_cli_pull_list_rm(tiny_model, tmp_path):
    hub = FakeHub()
    hub.add_folder("acme/tiny-cli", tiny_model)
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "PATH": "/usr/bin:/bin"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "novamlx_gateway", "models", "--data-dir", str(tmp_path), *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    try:
        r = cli("pull", "acme/tiny-cli")
        assert r.returncode == 0, r.stderr
        assert "100.0%" in r.stderr and (tmp_path / "models" / "acme" / "tiny-cli" / "model.safetensors").exists()
        r = cli("list")
        assert "acme/tiny-cli" in r.stdout and "llm" in r.stdout
        r = cli("search", "tiny")
        assert "acme/tiny-cli" in r.stdout
        assert cli("rm", "acme/nope", "-y").returncode == 1
        r = cli("rm", "acme/tiny-cli", "-y")
        assert r.returncode == 0 and not (tmp_path / "models" / "acme").exists()
    finally:
        hub.close()
