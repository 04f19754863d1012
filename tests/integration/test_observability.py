"""GET /metrics (Prometheus text, parsed by prometheus-client's own parser) moving with traffic,
and the session / all-time usage counters: persisted across a gateway restart, untouched by a
worker kill -9, cleared through the admin API."""
import os
import signal
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server

ADMIN = {"authorization": "Bearer adm"}


def scrape(s) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape."""
    r = httpx.get(s.base_url + "/metrics", headers=s.headers, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(sm.name, frozenset(sm.labels.items())): sm.value
            for fam in text_string_to_metric_families(r.text) for sm in fam.samples}


def value(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def chat(s, n=5):
    r = s.openai().chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=n, temperature=0, extra_body={"ignore_eos": True})
    return r.usage


def test_metrics_move_with_traffic_and_need_the_key(tiny_model, tmp_path):
    s = Server(["--model", str(tiny_model), "--health-interval", "0.3"], tmp_path).wait_ready()
    try:
        assert httpx.get(s.base_url + "/metrics").status_code == 401  # behind the API key like /v1
        before = scrape(s)
        usage = chat(s)
        s.openai().models.list()
        httpx.post(s.base_url + "/v1/chat/completions", headers=s.headers, json={"model": "tiny-llama"})  # 400
        time.sleep(0.8)  # a health push carries the worker's numbers
        after = scrape(s)
        route = "/v1/chat/completions"
        assert value(after, "novamlx_http_requests_total", route=route, status="200") == \
            value(before, "novamlx_http_requests_total", route=route, status="200") + 1
        assert value(after, "novamlx_http_requests_total", route=route, status="400") >= 1
        assert value(after, "novamlx_http_requests_total", route="/v1/models", status="200") >= 1
        assert value(after, "novamlx_tokens_total", model="tiny-llama", kind="completion") == \
            value(before, "novamlx_tokens_total", model="tiny-llama", kind="completion") + usage.completion_tokens
        assert value(after, "novamlx_tokens_total", model="tiny-llama", kind="prompt") >= usage.prompt_tokens
        assert value(after, "novamlx_time_to_first_token_seconds_count", model="tiny-llama") >= 1
        assert value(after, "novamlx_time_per_output_token_seconds_count", model="tiny-llama") >= 1
        assert value(after, "novamlx_http_request_duration_seconds_count", route=route) >= 2
        assert value(after, "novamlx_worker_ready") == 1 and value(after, "novamlx_worker_rss_bytes") > 0
        assert ("novamlx_requests_running", frozenset()) in after
        assert not [k for k in after if k[0] == "novamlx_http_requests_total" and "/v1/responses/" in dict(k[1])
                    .get("route", "") and "{id}" not in dict(k[1])["route"]]  # ids never become labels
    finally:
        s.stop()


def test_usage_counters_persist_and_clear(tiny_model, tmp_path):
    args = ["--model", str(tiny_model), "--admin-key", "adm", "--health-interval", "0.3"]
    s = Server(args, tmp_path).wait_ready()
    try:
        for _ in range(2):
            chat(s, 4)
        st = s.stats()
        assert st["session"]["requests"] == 2 and st["all_time"]["requests"] == 2
        assert st["session"]["completion_tokens"] == 8 and st["session"]["models"]["tiny-llama"]["requests"] == 2
        assert st["session"]["avg_tokens_per_s"] > 0
        # a worker killed -9: the gateway counts, nothing is lost, counting goes on
        os.kill(s.health()["worker"]["pid"], signal.SIGKILL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                chat(s, 4)
                break
            except Exception:  # noqa: BLE001 - the worker is restarting
                time.sleep(0.5)
        assert s.stats()["all_time"]["requests"] == 3
    finally:
        s.stop()
    s = Server(args, tmp_path).wait_ready()  # same data dir: all-time survives, the session starts over
    try:
        st = s.stats()
        assert st["all_time"]["requests"] == 3 and st["all_time"]["completion_tokens"] == 12
        assert st["session"]["requests"] == 0
        chat(s, 4)
        admin = f"http://127.0.0.1:{s.admin_port}/admin/api/stats"
        assert httpx.get(admin, headers=ADMIN).json()["session"]["requests"] == 1
        bad = httpx.post(admin + "/clear", headers=ADMIN, json={"scope": "everything"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "scope"
        r = httpx.post(admin + "/clear", headers=ADMIN, json={"scope": "session"})
        assert r.status_code == 200 and r.json()["session"]["requests"] == 0 and r.json()["all_time"]["requests"] == 4
        r = httpx.post(admin + "/clear", headers=ADMIN, json={"scope": "all_time"})
        assert r.json()["all_time"]["requests"] == 0
        assert s.stats()["all_time"]["requests"] == 0
    finally:
        s.stop()
    s = Server(args, tmp_path).wait_ready()
    try:
        assert s.stats()["all_time"]["requests"] == 0  # the clearing was saved
    finally:
        s.stop()
