"""A model sharded over 2 local ranks (mlx.launch, ring backend on loopback) answers exactly
like the unsharded one, through the real gateway; the group is supervised as one worker."""
import os
import signal
import time

import psutil
import pytest

from tests.conftest import SCRIPTS, Server

PROMPTS = ["Tell me about the sea.", "List three colours.", "What is 2+2?", "Write a haiku about rain."]


def _answers(s) -> list[str]:
    c = s.openai()
    out = []
    for p in PROMPTS:
        r = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": p}], temperature=0,
                                      max_tokens=12, extra_body={"ignore_eos": True})
        out.append(r.choices[0].message.content)
    return out


def _ranks(s) -> list[psutil.Process]:
    gateway = psutil.Process(s.proc.pid)
    return [p for p in gateway.children(recursive=True) if "novamlx_worker" in " ".join(p.cmdline())
            and "mlx._distributed_utils" not in " ".join(p.cmdline()) and p.name().startswith("python")]


@pytest.fixture(scope="module")
def single(tiny_model, tmp_path_factory):
    s = Server(["--model", str(tiny_model), "--embedding-model", "none"], tmp_path_factory.mktemp("single")).wait_ready()
    yield _answers(s)
    s.stop()


def test_sharded_greedy_equals_unsharded(single, tiny_model, tmp_path):
    s = Server(["--model", str(tiny_model), "--embedding-model", "none", "--distributed-backend", "ring",
                "--distributed-ranks", "2", "--health-interval", "0.5"], tmp_path,
               env={"NOVAMLX_TEST_SCRIPTS": str(SCRIPTS)}).wait_ready()
    try:
        assert _answers(s) == single
        # non-ASCII text arrives whole, streamed and not
        want = (SCRIPTS / "unicode.txt").read_text(encoding="utf-8")
        c = s.openai()
        r = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "SCRIPT:unicode"}])
        assert r.choices[0].message.content == want
        chunks = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "SCRIPT:unicode"}],
                                           stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want
        # several at once: the ranks batch them in step
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            c = s.openai()
            futs = [pool.submit(lambda p=p: c.chat.completions.create(
                model="tiny-llama", messages=[{"role": "user", "content": p}], temperature=0, max_tokens=12,
                extra_body={"ignore_eos": True}).choices[0].message.content) for p in PROMPTS]
            assert [f.result() for f in futs] == single
        # sampling without a seed still works (rank 0 hands every rank the same seed)
        r = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                      temperature=1.0)
        assert r.usage.completion_tokens >= 1
        time.sleep(1.5)
        ranks = s.health()["health"]["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1] and all(r["rss_bytes"] > 0 for r in ranks)
        assert len(_ranks(s)) == 2

        # a follower dying takes the group down; the supervisor starts a new group that serves again
        follower = max(_ranks(s), key=lambda p: p.create_time())
        os.kill(follower.pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if s.health()["worker"]["restarts"] >= 1 and _answers(s) == single:
                    break
            except Exception:  # noqa: BLE001 - the group is restarting
                pass
            time.sleep(1)
        else:
            raise AssertionError(f"the group did not come back:\n{s.log_path.read_text()[-3000:]}")
    finally:
        s.stop()
