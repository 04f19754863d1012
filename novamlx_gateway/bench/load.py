"""Load against any OpenAI-compatible server: closed-loop concurrency, open-loop request rate,
forced output lengths, multi-turn agent replay and cached-prefix TTFT. Streams every request
and times each chunk, so TTFT, TPOT and inter-token latency come from what a client sees.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Sample:
    start: float
    first: float | None = None
    end: float = 0.0
    tokens: int = 0
    cached: int = 0
    itl: list[float] = field(default_factory=list)
    error: str | None = None


# Common words that byte-level BPE vocabularies hold as one token each (with their leading
# space), so a prompt of n of them is n tokens: every request then has the same shape, and
# a warm-up pass compiles exactly the kernels the timed pass uses.
WORDS = ("the of and to in is you that it he was for on are as with his they at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up "
         "other about out many then them these so some her would make like him into time has look two more write "
         "go see number no way could people my than first water been call who oil its now find long down day did "
         "get come made may part").split()


def synthetic_prompt(rng: random.Random, n_tokens: int) -> str:
    """n_tokens random common words: requests share no prefix beyond the chat template."""
    return " ".join(rng.choice(WORDS) for _ in range(max(1, n_tokens)))


async def stream_chat(client: httpx.AsyncClient, url: str, body: dict, headers: dict) -> Sample:
    s = Sample(time.perf_counter())
    last = None
    try:
        async with client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code != 200:
                s.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return s
            usage_tokens = None
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if obj.get("usage"):
                    usage_tokens = obj["usage"].get("completion_tokens")
                    s.cached = (obj["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                for ch in obj.get("choices") or []:
                    piece = (ch.get("delta") or {}).get("content") or ch.get("text")
                    if piece:
                        now = time.perf_counter()
                        if s.first is None:
                            s.first = now
                        else:
                            s.itl.append(now - last)
                        last = now
                        s.tokens += 1
            if usage_tokens:
                s.tokens = usage_tokens
    except httpx.HTTPError as e:
        s.error = f"{type(e).__name__}: {e}"
    s.end = time.perf_counter()
    return s


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summarize(samples: list[Sample], wall: float) -> dict:
    ok = [s for s in samples if s.error is None and s.first is not None]
    tokens = sum(s.tokens for s in ok)
    ttft = [s.first - s.start for s in ok]
    tpot = [(s.end - s.first) / (s.tokens - 1) for s in ok if s.tokens > 1]
    itl = [x for s in ok for x in s.itl]
    return {"requests": len(samples), "errors": len(samples) - len(ok), "output_tokens": tokens,
            "output_tok_s": tokens / wall if wall > 0 else 0.0, "wall_s": wall,
            "ttft_p50_ms": _pct(ttft, 0.5) * 1e3, "ttft_p99_ms": _pct(ttft, 0.99) * 1e3,
            "tpot_p50_ms": _pct(tpot, 0.5) * 1e3, "tpot_p99_ms": _pct(tpot, 0.99) * 1e3,
            "itl_p50_ms": _pct(itl, 0.5) * 1e3, "itl_p99_ms": _pct(itl, 0.99) * 1e3,
            "first_error": next((s.error for s in samples if s.error), None)}


def chat_body(model: str, prompt: str, output_len: int, temperature: float = 0.0) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": output_len,
            "temperature": temperature, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}


async def run_load(base_url: str, model: str, *, concurrency: int, requests: int, input_len: int,
                   output_len: int, rate: float | None = None, api_key: str | None = None, seed: int = 0,
                   stagger_s: float = 0.0, temperature: float = 0.0) -> dict:
    """Closed loop (`concurrency` clients back to back) or open loop (Poisson arrivals at `rate`/s)."""
    rng = random.Random(seed)
    bodies = [chat_body(model, synthetic_prompt(rng, input_len), output_len, temperature) for _ in range(requests)]
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=max(concurrency, 1) + 8, max_keepalive_connections=max(concurrency, 1) + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600, connect=60), limits=limits) as client:
        t0 = time.perf_counter()
        if rate:
            offsets, t = [], 0.0
            for _ in bodies:  # Poisson arrivals
                t += rng.expovariate(rate)
                offsets.append(t)

            async def arrive(offset, body):
                await asyncio.sleep(offset)
                return await stream_chat(client, url, body, headers)

            samples = await asyncio.gather(*(arrive(o, b) for o, b in zip(offsets, bodies)))
        else:
            queue = list(bodies)
            samples: list[Sample] = []

            async def worker(k: int):
                # mlx_lm.server's listen backlog is small: stagger the first connections.
                await asyncio.sleep(k * stagger_s)
                while queue:
                    samples.append(await stream_chat(client, url, queue.pop(), headers))

            await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    out = summarize(samples, wall)
    out.update(concurrency=concurrency, input_len=input_len, output_len=output_len)
    return out


async def agent_replay(base_url: str, model: str, *, turns: int, turn_len: int, output_len: int,
                       api_key: str | None = None, seed: int = 0) -> list[dict]:
    """One conversation resent in full each turn, as coding agents do; TTFT and cached tokens per turn."""
    rng = random.Random(seed)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/chat/completions"
    messages = [{"role": "system", "content": synthetic_prompt(rng, turn_len * 2)}]
    rows = []
    async with httpx.AsyncClient(timeout=3600) as client:
        for turn in range(turns):
            messages.append({"role": "user", "content": synthetic_prompt(rng, turn_len)})
            body = {**chat_body(model, "", output_len), "messages": list(messages)}
            s = await stream_chat(client, url, body, headers)
            r = await client.post(url, json={**body, "stream": False, "max_tokens": 1}, headers=headers)
            prompt_tokens = r.json().get("usage", {}).get("prompt_tokens", 0) if r.status_code == 200 else 0
            reply = synthetic_prompt(rng, output_len)  # a fixed reply keeps the replay deterministic
            messages.append({"role": "assistant", "content": reply})
            rows.append({"turn": turn + 1, "ttft_ms": ((s.first or s.end) - s.start) * 1e3, "cached_tokens": s.cached,
                         "prompt_tokens": prompt_tokens, "error": s.error})
    return rows


async def prefix_ttft(base_url: str, model: str, *, prefix_len: int, api_key: str | None = None) -> dict:
    """TTFT of a long prompt cold, then again with the same prefix and a new question."""
    rng = random.Random(7)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/chat/completions"
    system = synthetic_prompt(rng, prefix_len)
    async with httpx.AsyncClient(timeout=3600) as client:
        out = {}
        for name in ("cold", "warm"):
            body = {**chat_body(model, "", 8), "messages": [{"role": "system", "content": system},
                                                            {"role": "user", "content": f"question {name}"}]}
            s = await stream_chat(client, url, body, headers)
            out[f"{name}_ttft_ms"] = ((s.first or s.end) - s.start) * 1e3
            out[f"{name}_cached_tokens"] = s.cached
            out[f"{name}_error"] = s.error
    out["speedup"] = out["cold_ttft_ms"] / max(out["warm_ttft_ms"], 1e-6)
    return out



async def embed_bench(base_url: str, model: str, api_key: str | None = None, n: int = 256,
                      batches: tuple[int, ...] = (1, 16, 64)) -> dict:
    """Sentences per second embedding n sentences, sent `batch` inputs per request."""
    rng = random.Random(3)
    sentences = [synthetic_prompt(rng, rng.randint(8, 24)) for _ in range(n)]
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/embeddings"
    out = {}
    async with httpx.AsyncClient(timeout=600) as client:
        await client.post(url, json={"model": model, "input": sentences[:64]}, headers=headers)  # warm
        for b in batches:
            t = time.perf_counter()
            for i in range(0, n, b):
                r = await client.post(url, json={"model": model, "input": sentences[i:i + b]}, headers=headers)
                r.raise_for_status()
            out[f"batch_{b}_sentences_per_s"] = round(n / (time.perf_counter() - t), 1)
    return out


MASK_SCHEMA = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}}},
               "required": ["items"]}


async def mask_bench(base_url: str, model: str, api_key: str | None = None, output_len: int = 64,
                     rounds: int = 3) -> dict:
    """One stream's decode rate (1000 / TPOT p50) with and without a json_schema mask, alternating."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/chat/completions"
    rng = random.Random(5)
    tpot = {"plain": [], "json_schema": []}
    async with httpx.AsyncClient(timeout=600) as client:
        for r in range(rounds + 1):  # the first round warms up
            for name in tpot:
                body = chat_body(model, synthetic_prompt(rng, 32), output_len)
                if name == "json_schema":
                    body["response_format"] = {"type": "json_schema", "json_schema": {"name": "b", "schema": MASK_SCHEMA}}
                s = await stream_chat(client, url, body, headers)
                if r and s.tokens > 1:
                    tpot[name].append((s.end - s.first) / (s.tokens - 1))
    out = {f"{k}_decode_tok_s": round(1 / (sorted(v)[len(v) // 2]), 2) for k, v in tpot.items() if v}
    if len(out) == 2:
        out["ratio"] = round(out["json_schema_decode_tok_s"] / out["plain_decode_tok_s"], 3)
    return out
