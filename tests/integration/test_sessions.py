"""Sessions through the server: session_id (or x-session-id) keeps a conversation's KV across
turns with the prefix cache off; the admin API lists, saves, restores after a worker crash,
forks and deletes; inference keys cannot reach it."""
import os
import signal
import time

import httpx

from tests.conftest import Server

SYSTEM = "You are a careful assistant. " * 20


def test_session_turns_restore_and_survive_a_worker_crash(tiny_long, tmp_path):
    s = Server(["--model", str(tiny_long), "--admin-key", "adm", "--embedding-model", "none",
                "--prefix-cache-mb", "0"], tmp_path).wait_ready()
    admin = f"http://127.0.0.1:{s.admin_port}/admin/api/sessions"
    hdr = {"x-admin-key": "adm"}
    try:
        c = s.openai()
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "first question"}]

        def ask(messages, **extra):
            r = c.chat.completions.create(model="tiny-long", messages=messages, max_tokens=8, temperature=0,
                                          extra_body={"ignore_eos": True, **extra})
            return r.choices[0].message.content, r.usage.prompt_tokens_details.cached_tokens, r.usage.prompt_tokens

        a1, cached1, p1 = ask(msgs, session_id="conv-1")
        assert cached1 == 0
        msgs += [{"role": "assistant", "content": a1}, {"role": "user", "content": "and then?"}]
        a2, cached2, _ = ask(msgs, session_id="conv-1")
        assert cached2 >= p1 - 8  # the first turn came back from the session (the prefix cache is off)
        listed = httpx.get(admin, headers=hdr).json()["sessions"]
        assert [x["id"] for x in listed] == ["conv-1"] and listed[0]["tokens"] > p1
        assert httpx.get(admin, headers=hdr).json()["bytes"] > 0
        assert httpx.get(admin, headers=s.headers).status_code in (401, 403)  # an inference key is no admin key
        assert httpx.post(f"{admin}/conv-1/save", headers=hdr).json()["saved"] is True
        turn3 = msgs + [{"role": "assistant", "content": a2}, {"role": "user", "content": "last one"}]
        uninterrupted, _, _ = ask(turn3, session_id="conv-ref")  # the same turn with no crash in between
        os.kill(s.health()["worker"]["pid"], signal.SIGKILL)  # the worker dies: its sessions in memory are gone
        deadline = time.time() + 60
        while time.time() < deadline and (s.health()["worker"]["restarts"] < 1 or s.health()["status"] != "ok"):
            time.sleep(0.3)
        r = httpx.post(f"{admin}/conv-1/restore", headers=hdr, json={"model": "tiny-long"})
        assert r.status_code == 200 and r.json()["tokens"] > p1
        msgs = turn3
        a3, cached3, _ = ask(msgs, session_id="conv-1")
        assert cached3 > p1 and a3 == uninterrupted
        fork = httpx.post(f"{admin}/conv-1/fork", headers=hdr, json={"new_id": "conv-2"}).json()
        assert fork["id"] == "conv-2"
        r = httpx.post(s.base_url + "/v1/chat/completions", headers={**s.headers, "x-session-id": "conv-2"},
                       json={"model": "tiny-long", "messages": msgs, "max_tokens": 4, "temperature": 0})
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > p1
        assert httpx.delete(f"{admin}/conv-2", headers=hdr).json()["deleted"] is True
        bad = httpx.post(s.base_url + "/v1/chat/completions", headers=s.headers,
                         json={"model": "tiny-long", "messages": msgs, "session_id": "../etc"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "session_id"
    finally:
        s.stop()
