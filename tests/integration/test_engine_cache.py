"""Prefix cache through the real server: memory and SSD hits give the cold output; preemption."""
import asyncio
import os
import signal
import time

import httpx

from tests.conftest import Server

SYSTEM = "You are a careful assistant. " * 40  # ~240 tokens of shared prefix


def chat(client, messages, n=24, **kw):
    return client.chat.completions.create(model="tiny-long", messages=messages, max_tokens=n, temperature=0,
                                          extra_body={"ignore_eos": True}, **kw)


def test_memory_hits_multi_turn_and_equal_output(tiny_long, tmp_path):
    s = Server(["--model", str(tiny_long), "--ssd-cache", "off"], tmp_path).wait_ready()
    try:
        c = s.openai()
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "first question"}]
        cold = chat(c, msgs)
        assert cold.usage.prompt_tokens_details.cached_tokens == 0
        warm = chat(c, msgs)
        assert warm.choices[0].message.content == cold.choices[0].message.content
        assert warm.usage.prompt_tokens_details.cached_tokens >= cold.usage.prompt_tokens - 64
        # An agent resends the whole conversation with the reply appended: it hits past the old prompt.
        turn2 = msgs + [{"role": "assistant", "content": cold.choices[0].message.content},
                        {"role": "user", "content": "second question"}]
        r2 = chat(c, turn2)
        assert r2.usage.prompt_tokens_details.cached_tokens >= (cold.usage.prompt_tokens // 64) * 64
        stats = httpx.get(s.base_url + "/v1/stats", headers=s.headers).json()
        deadline = time.time() + 8
        while time.time() < deadline and stats["prefix_cache"].get("tiny-long", {}).get("hits", 0) < 2:
            time.sleep(0.5)
            stats = httpx.get(s.base_url + "/v1/stats", headers=s.headers).json()
        pc = stats["prefix_cache"]["tiny-long"]
        assert pc["hits"] >= 2 and pc["tokens_saved"] > 0 and pc["referenced_blocks"] == 0
    finally:
        s.stop()


def test_ssd_tier_hits_survive_restart_and_corruption(tiny_long, tmp_path):
    # A memory budget of ~nothing sends every block to the SSD tier at once.
    s = Server(["--model", str(tiny_long), "--prefix-cache-mb", "0.0001", "--health-interval", "0.3"], tmp_path).wait_ready()
    try:
        c = s.openai()
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "q"}]
        cold = chat(c, msgs)
        warm = chat(c, msgs)
        assert warm.choices[0].message.content == cold.choices[0].message.content
        assert warm.usage.prompt_tokens_details.cached_tokens > 0
        files = list((tmp_path / "cache" / "kv").glob("*/*.safetensors"))
        assert len(files) >= 3 and len({f.parent.name for f in files}) > 1
        # Blocks on disk outlive the worker.
        os.kill(s.health()["worker"]["pid"], signal.SIGKILL)
        time.sleep(1)
        again = chat(c, msgs)
        assert again.choices[0].message.content == cold.choices[0].message.content
        assert again.usage.prompt_tokens_details.cached_tokens > 0
        # Truncated files are skipped and deleted; the answer is still right.
        for f in (tmp_path / "cache" / "kv").glob("*/*.safetensors"):
            f.write_bytes(f.read_bytes()[:40])
        os.kill(s.health()["worker"]["pid"], signal.SIGKILL)
        time.sleep(1)
        broken = chat(c, msgs)
        assert broken.choices[0].message.content == cold.choices[0].message.content
        assert broken.usage.prompt_tokens_details.cached_tokens == 0
        assert s.health()["health"]["prefix_cache"]["ssd"]["corrupt_dropped"] >= 1
    finally:
        s.stop()


def test_preempted_request_resumes_to_same_output(tiny_long, tmp_path):
    s = Server(["--model", str(tiny_long), "--max-batch", "1", "--ssd-cache", "off", "--health-interval", "0.3"],
               tmp_path).wait_ready()
    try:
        c = s.async_openai()
        low_msgs = [{"role": "user", "content": "a long low priority story"}]

        async def main():
            alone = await c.chat.completions.create(model="tiny-long", messages=low_msgs, max_tokens=1500, temperature=0,
                                                    extra_body={"ignore_eos": True})
            low = asyncio.create_task(c.chat.completions.create(
                model="tiny-long", messages=low_msgs, max_tokens=1500, temperature=0,
                extra_body={"ignore_eos": True, "priority": "low"}))
            await asyncio.sleep(0.5)
            high = await c.chat.completions.create(model="tiny-long", messages=[{"role": "user", "content": "urgent"}],
                                                   max_tokens=20, temperature=0, extra_body={"ignore_eos": True},
                                                   extra_headers={"x-priority": "high"})
            return alone, await low, high

        alone, low, high = asyncio.run(main())
        assert high.usage.completion_tokens == 20
        assert low.choices[0].message.content == alone.choices[0].message.content
        engine = httpx.get(s.base_url + "/v1/stats", headers=s.headers).json()["engine"]
        assert engine["total_preempted"] >= 1
    finally:
        s.stop()


def test_sliding_window_model_reuses_a_resent_conversation(tmp_path):
    """gemma3_text (sliding-window + global layers) through the server and the SDK: the resent
    prompt and the next turn of the conversation report cached tokens and answer as cold."""
    from tests.fixtures.tiny_models import TINY_GEMMA3, build_tiny_mlx

    path = build_tiny_mlx(tmp_path / "models" / "tiny-gemma3-text", TINY_GEMMA3, seed=5)
    s = Server(["--model", str(path), "--embedding-model", "none", "--ssd-cache", "off"], tmp_path / "d").wait_ready()
    try:
        c = s.openai()
        ask = lambda msgs: c.chat.completions.create(model="tiny-gemma3-text", messages=msgs, max_tokens=12,  # noqa: E731
                                                     temperature=0, extra_body={"ignore_eos": True})
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "first question"}]
        cold = ask(msgs)
        warm = ask(msgs)
        assert cold.usage.prompt_tokens_details.cached_tokens == 0
        assert warm.usage.prompt_tokens_details.cached_tokens == cold.usage.prompt_tokens - 1
        assert warm.choices[0].message.content == cold.choices[0].message.content
        turn2 = msgs + [{"role": "assistant", "content": cold.choices[0].message.content},
                        {"role": "user", "content": "and the second?"}]
        r = ask(turn2)
        assert r.usage.prompt_tokens_details.cached_tokens >= cold.usage.prompt_tokens - 1
    finally:
        s.stop()
