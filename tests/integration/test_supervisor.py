"""Crash isolation, hang detection, health push, memory enforcer, backpressure, shutdown."""
import asyncio
import json
import os
import signal
import time

import httpx
import openai
import psutil
import pytest

from tests.conftest import Server

LONG = dict(model="tiny-long", messages=[{"role": "user", "content": "go"}], max_tokens=3500, temperature=0,
            extra_body={"ignore_eos": True})


async def _stream_until_end(client, started: asyncio.Event | None = None, **kw):
    """Returns ("ok", text) or ("error", message); sets `started` at the first content chunk."""
    text = ""
    try:
        stream = await client.chat.completions.create(stream=True, **{**LONG, **kw})
        async for chunk in stream:
            for ch in chunk.choices:
                text += ch.delta.content or ""
            if text and started is not None:
                started.set()
        return "ok", text
    except openai.APIError as e:
        return "error", str(e)


def test_kill9_during_8_streams(tiny_long, tmp_path):
    s = Server(["--model", str(tiny_long), "--max-concurrent-requests", "8", "--max-queue", "32"], tmp_path).wait_ready()
    try:
        pid = s.health()["worker"]["pid"]
        client = s.async_openai()

        async def main():
            flags = [asyncio.Event() for _ in range(8)]
            streams = [asyncio.create_task(_stream_until_end(client, f)) for f in flags]
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 60)
            # These wait in the gateway's queue behind the 8 running streams.
            queued = [asyncio.create_task(client.chat.completions.create(**{**LONG, "max_tokens": 5})) for _ in range(4)]
            await asyncio.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            results = await asyncio.wait_for(asyncio.gather(*streams), 60)
            done = await asyncio.wait_for(asyncio.gather(*queued), 60)
            fresh = await client.chat.completions.create(**{**LONG, "max_tokens": 3})
            return results, done, fresh, time.monotonic() - killed_at

        results, done, fresh, elapsed = asyncio.run(main())
        assert all(kind == "error" for kind, _ in results), results
        assert all("crashed" in msg for _, msg in results)
        assert all(r.usage.completion_tokens == 5 for r in done)
        assert fresh.choices[0].message.content is not None and elapsed < 10
        h = s.health()
        assert h["worker"]["restarts"] == 1 and h["worker"]["pid"] != pid and h["status"] == "ok"
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        s.stop()


def test_fault_crash_non_streaming_gets_503_then_recovers(tiny_long, tmp_path):
    s = Server(["--model", str(tiny_long)], tmp_path, env={"NOVAMLX_FAULT": "crash_after_tokens:40"}).wait_ready()
    try:
        client = s.openai()
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(**{**LONG, "max_tokens": 200})
        assert e.value.status_code == 503
        assert e.value.response.headers["retry-after"]
        assert e.value.code == "worker_crashed"
        r = client.chat.completions.create(**{**LONG, "max_tokens": 100})  # the replacement has no fault
        assert r.usage.completion_tokens == 100
        assert s.health()["worker"]["restarts"] == 1
    finally:
        s.stop()


def test_hung_worker_is_replaced(tiny_long, tmp_path):
    s = Server(["--model", str(tiny_long), "--ping-timeout", "2"], tmp_path,
               env={"NOVAMLX_FAULT": "hang_after_tokens:30"}).wait_ready()
    try:
        client = s.async_openai()
        t0 = time.monotonic()
        kind, msg = asyncio.run(_stream_until_end(client, max_tokens=500))
        assert kind == "error" and time.monotonic() - t0 < 30
        r = s.openai().chat.completions.create(**{**LONG, "max_tokens": 4})
        assert r.usage.completion_tokens == 4
        assert s.health()["worker"]["restarts"] == 1
    finally:
        s.stop()


def test_health_log_lines_at_interval(server):
    path = server.data_dir / "logs" / "worker-health.jsonl"
    deadline = time.time() + 10
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 4):
        time.sleep(0.3)
    lines = [json.loads(x) for x in path.read_text().splitlines()][-4:]
    for rec in lines:
        for key in ("rss_bytes", "mlx_active_bytes", "mlx_peak_bytes", "mlx_cache_bytes", "models", "running",
                    "queued", "tokens_per_s", "time", "memory", "restarts"):
            assert key in rec, key
        assert rec["models"] == ["tiny-llama"] and rec["rss_bytes"] > 0
    gaps = [b["time"] - a["time"] for a, b in zip(lines, lines[1:])]
    assert all(0.3 < g < 4.0 for g in gaps), gaps  # configured interval 0.5 s (slack for a loaded 2-core CI box)
    assert server.health()["health"]["pid"] == server.health()["worker"]["pid"]


def test_memory_enforcer_evicts_then_refuses_then_recovers(tiny_model, tiny_long, tmp_path):
    s = Server(["--model", str(tiny_model), "--model", str(tiny_long), "--pin", "tiny-llama",
                "--max-process-memory", "1MB", "--admin-key", "admin-secret"], tmp_path).wait_ready()
    admin = f"http://127.0.0.1:{s.admin_port}/admin/api/memory"
    hdr = {"authorization": "Bearer admin-secret"}
    try:
        state = {}
        deadline = time.time() + 10
        while time.time() < deadline:
            state = httpx.get(admin, headers=hdr).json()
            if state["refusing"]:
                break
            time.sleep(0.3)
        assert state["refusing"] and state["models_loaded"] == ["tiny-llama"]  # the unpinned one was evicted
        client = s.openai()
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(**{**LONG, "model": "tiny-llama", "max_tokens": 3})
        assert e.value.status_code == 503 and e.value.code == "out_of_memory"
        assert httpx.get(admin).status_code == 401
        state = httpx.put(admin, headers=hdr, json={"max_process_memory": "90%"}).json()
        assert not state["refusing"]
        r = client.chat.completions.create(**{**LONG, "max_tokens": 3})  # tiny-long loads again on demand
        assert r.usage.completion_tokens == 3
        assert "tiny-long" in httpx.get(admin, headers=hdr).json()["models_loaded"]
        assert httpx.put(admin, headers=hdr, json={"max_process_memory": "lots"}).status_code == 400
    finally:
        s.stop()


def test_kv_budget_refuses_what_never_fits_and_queues_what_fits_later(tiny_long, tmp_path):
    # tiny-long caches 512 bytes a token: a 1 MB budget holds 2048 tokens.
    s = Server(["--model", str(tiny_long), "--kv-budget-mb", "1"], tmp_path).wait_ready()
    try:
        client = s.async_openai()

        async def main():
            with pytest.raises(openai.BadRequestError) as e:
                await client.chat.completions.create(**{**LONG, "max_tokens": 3000})
            assert e.value.code == "kv_budget_exceeded" and "MB" in e.value.message
            return await asyncio.gather(*(client.chat.completions.create(**{**LONG, "max_tokens": 1200}) for _ in range(3)))

        results = asyncio.run(main())
        assert [r.usage.completion_tokens for r in results] == [1200] * 3
    finally:
        s.stop()


def test_429_when_queue_is_full(tiny_long, tmp_path):
    s = Server(["--model", str(tiny_long), "--max-concurrent-requests", "1", "--max-queue", "1"], tmp_path).wait_ready()
    try:
        client = s.async_openai()

        async def one():
            try:
                await client.chat.completions.create(**{**LONG, "max_tokens": 300})
                return "ok"
            except openai.RateLimitError as e:
                assert e.response.headers["retry-after"]
                return "429"

        async def flood():
            return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(6))), 120)

        outcomes = asyncio.run(flood())
        assert outcomes.count("429") >= 3 and outcomes.count("ok") >= 2
        assert s.health()["requests"]["rejected"] >= 3
    finally:
        s.stop()


def test_timeout_aborts_work(tiny_long, tmp_path):
    s = Server(["--model", str(tiny_long), "--request-timeout", "1.5", "--health-interval", "0.3"], tmp_path).wait_ready()
    try:
        with pytest.raises(openai.APIStatusError) as e:
            s.openai().chat.completions.create(**LONG)
        assert e.value.status_code == 504
        kind, msg = asyncio.run(_stream_until_end(s.async_openai()))
        assert kind == "error" and "timed out" in msg
        _wait_idle(s)
    finally:
        s.stop()


def _wait_idle(s, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        h = s.health()
        if h["in_flight"] == 0 and h["health"]["running"] == 0 and h["health"]["queued"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"worker still busy: {s.health()}")


def test_client_disconnect_aborts(server, tiny_model):
    body = {**LONG, "model": "tiny-llama", "max_tokens": 400, "stream": True}
    body.update(body.pop("extra_body"))
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body, headers=server.headers) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 4:
                break
    _wait_idle(server, timeout=5)


def test_abandoned_requests_are_aborted(tiny_long, tmp_path):
    """A client that gives up on a long non-streaming answer (any route) or a big rerank frees its
    slot and the worker at once."""
    s = Server(["--model", str(tiny_long)], tmp_path).wait_ready()
    try:
        msgs = [{"role": "user", "content": "go"}]
        bodies = {"/v1/chat/completions": {"messages": msgs, "max_tokens": 3500, "ignore_eos": True},
                  "/v1/messages": {"messages": msgs, "max_tokens": 3500, "ignore_eos": True},
                  "/v1/responses": {"input": "go", "max_output_tokens": 3500, "ignore_eos": True}}
        for route, body in bodies.items():
            aborted = s.stats()["engine"]["total_aborted"]
            try:
                r = httpx.post(s.base_url + route, json={"model": "tiny-long", **body}, headers=s.headers, timeout=1.5)
            except httpx.ReadTimeout:
                pass
            else:
                pytest.fail(f"{route} answered before the client gave up: {r.status_code} {r.text[:400]}")
            _wait_idle(s, timeout=5)
            assert s.stats()["engine"]["total_aborted"] == aborted + 1, route
        docs = [f"document {i} on the lighthouse keepers of the northern coast" for i in range(10000)]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.base_url + "/v1/rerank", json={"query": "lighthouse", "documents": docs},
                       headers=s.headers, timeout=3)
        deadline = time.time() + 10
        while time.time() < deadline and s.stats()["engine"]["jobs"]:
            time.sleep(0.2)
        assert s.stats()["engine"]["jobs"] == 0 and s.health()["in_flight"] == 0
    finally:
        s.stop()


def test_sigterm_finishes_in_flight_and_leaves_no_orphan(tiny_long, tmp_path):
    s = Server(["--model", str(tiny_long)], tmp_path).wait_ready()
    worker_pid = s.health()["worker"]["pid"]
    body = {**LONG, "max_tokens": 300, "stream": True}
    body.update(body.pop("extra_body"))
    lines = []
    with httpx.stream("POST", s.base_url + "/v1/chat/completions", json=body, headers=s.headers, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            if len(lines) == 3:
                s.proc.send_signal(signal.SIGTERM)
    assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"
    assert s.proc.wait(30) == 0
    deadline = time.time() + 10
    while time.time() < deadline and psutil.pid_exists(worker_pid):
        try:
            if psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE
    s.stop()


def test_sigterm_past_the_grace_ends_streams_with_an_error_event(tiny_long, tmp_path):
    """A stream still running when the shutdown grace runs out ends with its wire's error event
    (OpenAI: an error chunk; Anthropic: event: error), never a bare cut; the gateway exits 0."""
    s = Server(["--model", str(tiny_long), "--shutdown-grace", "3", "--embedding-model", "none"], tmp_path).wait_ready()
    bodies = {"/v1/chat/completions": {**LONG, "stream": True, "ignore_eos": True},
              "/v1/messages": {**LONG, "stream": True, "ignore_eos": True}}
    for b in bodies.values():
        b.pop("extra_body")
    seen: dict[str, list[str]] = {}

    def read(route):
        lines = seen.setdefault(route, [])
        with httpx.stream("POST", s.base_url + route, json=bodies[route], headers=s.headers, timeout=60) as r:
            for line in r.iter_lines():
                lines.append(line)

    import threading

    threads = [threading.Thread(target=read, args=(route,)) for route in bodies]
    for t in threads:
        t.start()
    time.sleep(1.5)
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    chat = [json.loads(x[6:]) for x in seen["/v1/chat/completions"] if x.startswith("data: {")]
    assert "shutting down" in chat[-1]["error"]["message"]
    msgs = seen["/v1/messages"]
    assert "event: error" in msgs and "shutting down" in msgs[msgs.index("event: error") + 1]
    assert s.proc.wait(30) == 0
    s.stop()


def test_big_rerank_does_not_stall_streams_or_trip_the_watchdog(tiny_long, tmp_path):
    """A 3,000-document rerank (seconds of work) runs a batch at a time between decode steps: a
    stream keeps getting tokens, the ping watchdog (2 s here) sees a live worker."""
    import threading

    s = Server(["--model", str(tiny_long), "--ping-timeout", "2"], tmp_path).wait_ready()
    try:
        arrivals: list[float] = []
        body = {**LONG, "stream": True, "ignore_eos": True, "max_tokens": 3000}
        body.pop("extra_body")

        def stream():
            with httpx.stream("POST", s.base_url + "/v1/chat/completions", json=body, headers=s.headers,
                              timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        arrivals.append(time.monotonic())

        t = threading.Thread(target=stream)
        t.start()
        deadline = time.time() + 30
        while not arrivals and time.time() < deadline:
            time.sleep(0.05)
        assert arrivals, "the stream did not start"
        docs = [f"document {i}: notes on tides, harbours and the keepers of lighthouses" for i in range(3000)]
        t0 = time.monotonic()
        r = httpx.post(s.base_url + "/v1/rerank", json={"query": "lighthouse", "documents": docs, "top_n": 3},
                       headers=s.headers, timeout=120)
        t1 = time.monotonic()
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        during = [a for a in arrivals if t0 <= a <= t1]
        gaps = [b - a for a, b in zip(during, during[1:])]
        # Interleaved, the longest gap is a rerank batch plus whatever else the machine does (under
        # a loaded 2-core box, up to ~2.5 s); not interleaved, it is the whole rerank (10 s and more).
        assert len(during) > 10 and max(gaps) < min(3.0, (t1 - t0) / 3), (t1 - t0, len(during), max(gaps, default=None))
        assert s.health()["worker"]["restarts"] == 0
        t.join(120)
    finally:
        s.stop()
