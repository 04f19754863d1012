"""GET /metrics: Prometheus text format (prometheus-client), on the inference port behind the
API key like every /v1 route (scrapers send `Authorization: Bearer <key>`; none is needed when
the server has no keys).

Counted here: HTTP requests by route template, method and status, with their duration;
per model, time to first token and time per output token, tokens (prompt, completion, cached)
and generation errors by kind. Read at scrape time: requests running and queued, worker
restarts and readiness, and the worker's last health push (memory, KV reserved, prefix-cache
blocks and hits per model). One registry per app, so test servers never share counters."""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("novamlx_http_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=r)
        self.duration = Histogram("novamlx_http_request_duration_seconds", "From request to the end of the response",
                                  ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("novamlx_time_to_first_token_seconds", "Submission to first token, per generation",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("novamlx_time_per_output_token_seconds", "Decode time per token after the first",
                              ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.tokens = Counter("novamlx_tokens", "Tokens by kind: prompt, completion, cached (prompt tokens reused)",
                              ["model", "kind"], registry=r)
        self.errors = Counter("novamlx_generation_errors", "Generations that ended in an error, by kind", ["kind"],
                              registry=r)

    def finished(self, model: str, prompt: int, completion: int, cached: int, ttft: float, total: float) -> None:
        self.tokens.labels(model, "prompt").inc(prompt)
        self.tokens.labels(model, "completion").inc(completion)
        self.tokens.labels(model, "cached").inc(cached)
        if completion > 0 and ttft > 0:
            self.ttft.labels(model).observe(ttft)
        if completion > 1 and total > ttft:
            self.tpot.labels(model).observe((total - ttft) / (completion - 1))

    def watch(self, app) -> None:
        """Gauges read from the app's state at each scrape."""
        self.registry.register(_StateCollector(app))


class _StateCollector:
    def __init__(self, app):
        self.app = app

    def collect(self):
        state = self.app.state
        adm, worker = state.admission, state.worker
        g = GaugeMetricFamily
        yield g("novamlx_requests_running", "Requests holding a slot", value=adm.running)
        yield g("novamlx_requests_queued", "Requests waiting for a slot", value=adm.queued)
        yield CounterMetricFamily("novamlx_requests_rejected", "Requests refused with 429 (queue full)",
                                  value=adm.rejected)
        yield CounterMetricFamily("novamlx_worker_restarts", "Times the model worker was restarted",
                                  value=worker.state.restarts)
        yield g("novamlx_worker_ready", "1 when the model worker is serving", value=int(bool(worker.state.ready)))
        yield g("novamlx_uptime_seconds", "Seconds since the gateway started", value=time.time() - state.started_at)
        h = worker.health
        if h is None:
            return
        for name, value, doc in (("rss_bytes", h.rss_bytes, "Worker resident memory"),
                                 ("mlx_active_bytes", h.mlx_active_bytes, "MLX memory in use"),
                                 ("mlx_peak_bytes", h.mlx_peak_bytes, "MLX peak memory"),
                                 ("mlx_cache_bytes", h.mlx_cache_bytes, "MLX buffer cache"),
                                 ("kv_reserved_bytes", h.kv_reserved_bytes, "KV cache reserved by admitted requests")):
            yield g(f"novamlx_worker_{name}", doc, value=value)
        yield g("novamlx_worker_sequences_running", "Sequences decoding in the worker", value=h.running)
        yield g("novamlx_worker_sequences_queued", "Sequences waiting in the worker", value=h.queued)
        yield g("novamlx_worker_tokens_per_second", "Generation rate over the last health period", value=h.tokens_per_s)
        blocks = g("novamlx_prefix_cache_blocks", "Prefix-cache blocks held in memory", labels=["model"])
        nbytes = g("novamlx_prefix_cache_bytes", "Prefix-cache bytes held in memory", labels=["model"])
        hits = CounterMetricFamily("novamlx_prefix_cache_hits", "Requests that reused cached blocks", labels=["model"])
        saved = CounterMetricFamily("novamlx_prefix_cache_tokens_saved", "Prompt tokens not recomputed",
                                    labels=["model"])
        for model, pc in (h.prefix_cache or {}).items():
            if isinstance(pc, dict) and "blocks" in pc:
                blocks.add_metric([model], pc.get("blocks", 0))
                nbytes.add_metric([model], pc.get("bytes", 0))
                hits.add_metric([model], pc.get("hits", 0))
                saved.add_metric([model], pc.get("tokens_saved", 0))
        yield from (blocks, nbytes, hits, saved)


class RecordRequests:
    """ASGI middleware: counts every HTTP response by route template (not the raw path, so ids
    never become labels), method and status, and times it to its last byte."""

    def __init__(self, app, metrics: Metrics, routes):
        self.app, self.metrics, self.routes = app, metrics, routes

    def _route(self, scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return route.path
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, start, status = self._route(scope), time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.duration.labels(route).observe(time.perf_counter() - start)


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
