"""Benchmark and perplexity runs as admin jobs: start, status with progress, cancel.

POST /admin/api/bench/start {"model", "prompt_lengths": [1024, 4096], "max_tokens": 128}: per
prompt length one request of random token ids (no prefix-cache hit), greedy, ignore_eos; reports
TTFT, prefill tok/s, generation tok/s, end-to-end latency (the worker's own timings) and the
worker's peak MLX memory.
POST /admin/api/ppl/start {"model", "texts": [...]} (default: a bundled sample): per-text
perplexity and token count, and the average over all predicted tokens (exp of the mean
negative log-likelihood), from the model's own logits (worker: engine/perplexity.py).
GET .../status and POST .../cancel. One job of each kind at a time (a second start: 409).
"""
from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse

from protocol import messages as m

from ..errors import APIError, worker_error
from .common import json_body

SAMPLE = Path(__file__).with_name("ppl_sample.txt")
MAX_TEXTS, MAX_TEXT_BYTES = 100, 1024 * 1024


class Job:
    """The latest job of one kind: state, progress, partial and final results."""

    def __init__(self, kind: str):
        self.kind = kind
        self.task: asyncio.Task | None = None
        self.info: dict = {"kind": kind, "state": "idle"}

    def start(self, run, total: int, params: dict) -> dict:
        if self.task is not None and not self.task.done():
            raise APIError(409, f"A {self.kind} job is already running ({self.info['id']}); cancel it first.",
                           "job_running")
        self.info = {"kind": self.kind, "id": uuid.uuid4().hex[:12], "state": "running", "params": params,
                     "progress": {"done": 0, "total": total}, "results": [], "started_at": time.time()}
        self.task = asyncio.get_running_loop().create_task(self._run(run))
        return self.info

    async def _run(self, run) -> None:
        try:
            self.info["summary"] = await run(self)
            self.info["state"] = "done"
        except asyncio.CancelledError:
            self.info["state"] = "cancelled"
        except APIError as e:
            self.info["state"], self.info["error"] = "failed", {"message": e.message, "type": e.code}
        except Exception as e:  # noqa: BLE001 - a job's failure is its status, never the server's
            self.info["state"], self.info["error"] = "failed", {"message": str(e), "type": "internal_error"}
        self.info["finished_at"] = time.time()

    def add(self, result: dict) -> None:
        self.info["results"].append(result)
        self.info["progress"]["done"] += 1

    def cancel(self) -> dict:
        if self.task is None or self.task.done():
            raise APIError(409, f"No {self.kind} job is running.", "no_job_running")
        self.task.cancel()
        return {"id": self.info["id"], "state": "cancelling"}


def _model(request: Request, body) -> m.ModelInfo:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise APIError(400, "Name a loaded or servable text model in `model`.", "invalid_value", "model")
    info = request.app.state.worker.resolve_model(body["model"])
    if info is None or info.kind not in ("llm", "vlm"):
        raise APIError(404, f"The model `{body['model']}` does not exist.", "model_not_found", "model")
    return info


async def bench_start(request: Request):
    body = await json_body(request)
    info = _model(request, body)
    lengths = body.get("prompt_lengths", [1024, 4096])
    max_tokens = body.get("max_tokens", 128)
    if (not isinstance(lengths, list) or not lengths or len(lengths) > 16
            or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1_000_000 for n in lengths)):
        raise APIError(400, "`prompt_lengths` must be 1 to 16 token counts.", "invalid_value", "prompt_lengths")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 2 <= max_tokens <= 8192:
        raise APIError(400, "`max_tokens` must be an integer from 2 to 8192.", "invalid_value", "max_tokens")
    worker = request.app.state.worker

    async def run(job: Job) -> dict:
        for n in lengths:
            if info.context_length and n + max_tokens > info.context_length:
                job.add({"prompt_tokens": n, "skipped": f"{n} + {max_tokens} tokens exceed the model's "
                                                       f"context window ({info.context_length})"})
                continue
            job.add(await _one_run(worker, info.id, n, max_tokens))
        done = [r for r in job.info["results"] if "ttft_ms" in r]
        return {"runs": len(done), "peak_memory_gb": max((r["peak_memory_gb"] for r in done), default=0.0)}

    return JSONResponse(request.app.state.bench.start(run, len(lengths), {"model": info.id, "prompt_lengths": lengths,
                                                                           "max_tokens": max_tokens}), status_code=202)


async def _one_run(worker, model: str, n: int, max_tokens: int) -> dict:
    rng = random.Random(time.time_ns())
    rid = f"bench-{uuid.uuid4().hex[:12]}"
    cmd = m.Generate(rid, model, m.Sampling(temperature=0, max_tokens=max_tokens, ignore_eos=True),
                     prompt_tokens=[rng.randrange(1000, 9000) for _ in range(n)])
    q: asyncio.Queue = asyncio.Queue()
    worker.submit(cmd, q)
    try:
        while True:
            ev = await q.get()
            if isinstance(ev, m.Error):
                raise worker_error(ev)
            if isinstance(ev, m.Finished):
                break
    finally:
        worker.abort(rid)  # (a no-op once it finished) a cancelled job stops its request
    u, ttft, total = ev.usage, ev.ttft_s, ev.total_s
    health = worker.health
    return {"prompt_tokens": u.prompt_tokens, "generated_tokens": u.completion_tokens,
            "ttft_ms": round(ttft * 1000, 1),
            "prefill_tokens_per_s": round(u.prompt_tokens / ttft, 1) if ttft > 0 else None,
            "generation_tokens_per_s": round((u.completion_tokens - 1) / (total - ttft), 1)
            if total > ttft and u.completion_tokens > 1 else None,
            "end_to_end_s": round(total, 3),
            "peak_memory_gb": round(health.mlx_peak_bytes / 1e9, 3) if health else None}


async def ppl_start(request: Request):
    body = await json_body(request)
    info = _model(request, body)
    texts = body.get("texts")
    if texts is None:
        texts = [SAMPLE.read_text()]
    if (not isinstance(texts, list) or not texts or len(texts) > MAX_TEXTS
            or not all(isinstance(t, str) and t.strip() and len(t.encode()) <= MAX_TEXT_BYTES for t in texts)):
        raise APIError(400, f"`texts` must be 1 to {MAX_TEXTS} non-empty strings of at most 1 MB.", "invalid_value",
                       "texts")
    worker = request.app.state.worker

    async def run(job: Job) -> dict:
        nll = predicted = tokens = 0
        for i, text in enumerate(texts):
            # (a cancelled job's call aborts the worker's piece of work too)
            ev = await worker.call(m.Perplexity(f"ppl-{uuid.uuid4().hex[:12]}", info.id, text), timeout=3600)
            d = ev.data
            job.add({"index": i, "perplexity": round(d["perplexity"], 4), "tokens": d["tokens"]})
            nll, predicted, tokens = nll + d["nll"], predicted + d["predicted"], tokens + d["tokens"]
        return {"average_perplexity": round(math.exp(nll / predicted), 4), "texts": len(texts), "tokens": tokens}

    return JSONResponse(request.app.state.ppl.start(run, len(texts), {"model": info.id, "texts": len(texts)}),
                        status_code=202)


def _job(request: Request) -> Job:
    return request.app.state.bench if "/bench/" in request.url.path else request.app.state.ppl


async def job_status(request: Request):
    return JSONResponse(_job(request).info)


async def job_cancel(request: Request):
    return JSONResponse(_job(request).cancel())
