"""Memory pressure from the machine (faked with NOVAMLX_PRESSURE) and MLX's cache given back
when idle: models are evicted by the rules, pinned ones stay, every request is still served,
and /health shows the level and what was done."""
import concurrent.futures as cf
import time

import httpx

from tests.conftest import Server

HI = [{"role": "user", "content": "hi"}]


def _until(check, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("condition not reached")


def _pressure(s):
    return s.health()["health"]["memory"]["pressure"]


def test_warning_keeps_one_unpinned_model_and_serves_both(tiny_model, tiny_long, tmp_path):
    s = Server(["--model", str(tiny_model), "--model", str(tiny_long), "--embedding-model", "none",
                "--health-interval", "0.3"], tmp_path, env={"NOVAMLX_PRESSURE": "warning"}).wait_ready()
    try:
        _until(lambda: len(s.health()["health"]["models"]) == 1)
        state = _pressure(s)
        assert state["level"] == "warning" and any(a["action"].startswith("evicted") for a in state["actions"])
        c = s.openai()
        for model in ("tiny-llama", "tiny-long"):  # the evicted one loads again on demand
            assert c.chat.completions.create(model=model, messages=HI, max_tokens=3).usage.completion_tokens >= 1
        assert s.health()["worker"]["restarts"] == 0
    finally:
        s.stop()


def test_critical_evicts_every_unpinned_model_but_not_the_pinned(tiny_model, tiny_long, tmp_path):
    s = Server(["--model", str(tiny_model), "--model", str(tiny_long), "--pin", "tiny-llama",
                "--embedding-model", "none", "--health-interval", "0.3"], tmp_path,
               env={"NOVAMLX_PRESSURE": "critical"}).wait_ready()
    try:
        _until(lambda: s.health()["health"]["models"] == ["tiny-llama"])
        assert _pressure(s)["level"] == "critical"
        c = s.openai()
        assert c.chat.completions.create(model="tiny-long", messages=HI, max_tokens=3).usage.completion_tokens >= 1
        _until(lambda: s.health()["health"]["models"] == ["tiny-llama"])  # idle again: evicted again
    finally:
        s.stop()


def test_idle_worker_returns_near_its_baseline_after_cancelled_streams_and_a_replay(tiny_long, tmp_path):
    """200 cancelled streams and a 20-turn conversation later, the idle worker holds no MLX cache
    and its RSS is within 64 MB of what it held idle before (measured here: +10 MB)."""
    s = Server(["--model", str(tiny_long), "--embedding-model", "none", "--health-interval", "0.3"],
               tmp_path).wait_ready()
    try:
        c = s.openai()
        c.chat.completions.create(model="tiny-long", messages=HI, max_tokens=8)
        time.sleep(3.5)
        baseline = s.health()["health"]["rss_bytes"]
        body = {"model": "tiny-long", "messages": HI, "max_tokens": 2000, "ignore_eos": True, "stream": True}

        def cancelled(_):
            with httpx.stream("POST", s.base_url + "/v1/chat/completions", json=body, headers=s.headers,
                              timeout=60) as r:
                for i, _ in enumerate(r.iter_lines()):
                    if i > 3:
                        break

        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(cancelled, range(200)))
        msgs = [{"role": "system", "content": "Be brief. " * 30}]
        for i in range(20):  # an agent's conversation: every turn resends all of it
            msgs.append({"role": "user", "content": f"step {i}: go on"})
            r = c.chat.completions.create(model="tiny-long", messages=msgs, max_tokens=24, extra_body={"ignore_eos": True})
            msgs.append({"role": "assistant", "content": r.choices[0].message.content})
        _until(lambda: (lambda h: h if h["in_flight"] == 0 and h["health"]["running"] == 0 else None)(s.health()))
        time.sleep(3.5)  # two idle seconds, then a health push
        h = s.health()["health"]
        print("rss baseline", baseline, "after", h["rss_bytes"], "mlx cache", h["mlx_cache_bytes"])
        assert h["mlx_cache_bytes"] < 32 * 1024**2, h["mlx_cache_bytes"]
        assert h["rss_bytes"] - baseline < 64 * 1024**2, (baseline, h["rss_bytes"])  # measured +10 MB
        assert s.health()["worker"]["restarts"] == 0
    finally:
        s.stop()
