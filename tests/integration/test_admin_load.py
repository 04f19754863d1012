"""Admin load by id, alias or path: every listed model, the embedded default included, and the
same weights never loaded twice."""
import httpx

from tests.conftest import Server

ADMIN = {"x-admin-key": "adm"}


def test_load_by_id_alias_and_path_is_one_copy(tmp_path):
    s = Server(["--admin-key", "adm", "--embedding-model", "none"], tmp_path, keys=()).wait_ready(timeout=300)
    base = f"http://127.0.0.1:{s.admin_port}/admin"

    def llms():
        return [m for m in httpx.get(base + "/models", headers=ADMIN).json()["data"] if m["kind"] == "llm"]

    try:
        (default,) = llms()
        assert default["id"] == "smollm2-135m-instruct" and default["loaded"] and default["path"].endswith(".gguf")
        for name in ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", default["path"]):
            r = httpx.post(base + "/models/load", headers=ADMIN, json={"model": name}, timeout=300)
            assert r.status_code == 200 and r.json() == {"id": "smollm2-135m-instruct", "loaded": True}, r.text
            assert [m["id"] for m in llms()] == ["smollm2-135m-instruct"]
        r = httpx.post(base + "/models/unload", headers=ADMIN, json={"model": "smollm2-135m-instruct"})
        assert r.status_code == 200 and not llms()[0]["loaded"]
        r = httpx.post(base + "/models/load", headers=ADMIN, json={"model": "smollm2-135m-instruct"}, timeout=300)
        assert r.status_code == 200, r.text
        (again,) = llms()
        assert again["loaded"] and again["id"] == "smollm2-135m-instruct"
        assert httpx.get(s.base_url + "/health").json()["health"]["models"] == ["smollm2-135m-instruct"]
        r = httpx.post(base + "/models/load", headers=ADMIN, json={"model": "no-such-model"})
        assert r.status_code == 404
    finally:
        s.stop()
