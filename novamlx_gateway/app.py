"""The Starlette application: routes, middleware, lifespan."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from protocol import messages as m

from .api.anthropic_messages import count_tokens, messages
from .api.cloud_proxy import parse_cloud_models
from .api.health import health
from .api.models import get_model, list_models
from .api.openai_chat import chat_completions
from .api.openai_completions import completions
from .api.openai_embeddings import embeddings
from .api.rerank import rerank
from .api.openai_responses import create_response, delete_response, get_response, input_items
from .api.stats import stats
from .admission import Admission
from .catalog import Catalog
from .config import Config
from .errors import HANDLERS
from .api.mcp import mcp_execute, mcp_tools
from .mcp_hub import McpHub
from .metrics import Metrics, RecordRequests, metrics_endpoint
from .middleware import LOCAL_ORIGINS, APIKeyAuth, BodyLimit, CancelOnDisconnect, HostCheck, RequestID
from .stores.responses import ResponseStore
from .stores.settings import SettingsStore
from .stores.usage import UsageStats
from .updates import UpdateCheck
from .web import page_routes
from .worker_client import WorkerClient


def create_app(cfg: Config, worker: WorkerClient | None = None) -> Starlette:
    worker = worker or WorkerClient(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        log = logging.getLogger("novamlx.catalog")
        try:
            found = await asyncio.to_thread(app.state.catalog.scan)
        except Exception:  # noqa: BLE001 - discovery must never keep the server from starting
            log.exception("model discovery failed; serving the configured models only")
            found = []
        if found:
            log.info("found on disk: %s", ", ".join(f.id for f in found))
        await worker.start()
        await app.state.mcp.start()
        saver = asyncio.get_running_loop().create_task(_save_usage(app.state.usage))
        checker = asyncio.get_running_loop().create_task(app.state.updates.run())
        try:
            yield
        finally:
            saver.cancel()
            checker.cancel()
            await app.state.mcp.stop()
            await worker.stop()
            app.state.usage.save()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/stats", stats, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/responses/{id}", get_response, methods=["GET"]),
        Route("/v1/responses/{id}", delete_response, methods=["DELETE"]),
        Route("/v1/responses/{id}/input_items", input_items, methods=["GET"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/rerank", rerank, methods=["POST"]),
        Route("/rerank", rerank, methods=["POST"]),
        Route("/v2/rerank", rerank, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/v1/mcp/tools", mcp_tools, methods=["GET"]),
        Route("/v1/mcp/execute", mcp_execute, methods=["POST"]),
        *page_routes("/chat", "chat.html"),
    ]
    metrics = Metrics()
    middleware = [
        Middleware(RecordRequests, metrics=metrics, routes=routes),
        # Browsers: localhost pages, plus configured origins ("*" opts in to every page).
        Middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_origin_regex=LOCAL_ORIGINS,
                   allow_methods=["*"], allow_headers=["*"], expose_headers=["x-request-id"]),
        Middleware(HostCheck, bound=cfg.host, allowed=cfg.allowed_hosts),
        Middleware(RequestID),
        Middleware(APIKeyAuth, keys=cfg.api_keys),
        Middleware(BodyLimit, max_bytes=int(cfg.max_request_size_mb * 1024 * 1024)),
        Middleware(CancelOnDisconnect),
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=HANDLERS, lifespan=lifespan)
    app.state.worker = worker
    app.state.config = cfg
    app.state.admission = Admission(cfg.max_concurrent_requests, cfg.max_queue)
    app.state.responses = ResponseStore(cfg.data_path / "responses")
    app.state.settings = worker.settings = SettingsStore(cfg.data_path / "model_settings.json")
    app.state.catalog = Catalog(cfg, worker, app.state.settings)
    app.state.cloud = parse_cloud_models(cfg.cloud_models)
    app.state.started_at = time.time()
    app.state.metrics = metrics
    metrics.watch(app)
    app.state.usage = UsageStats(cfg.data_path / "usage_stats.json")
    app.state.mcp = McpHub(cfg.mcp_servers, cfg.data_path)
    app.state.updates = UpdateCheck(cfg.update_url, cfg.data_path / "update_check.json", cfg.update_check)
    worker.observers.append(lambda cmd, ev: _observe(app, cmd, ev))
    return app


def _observe(app, cmd, ev) -> None:
    """A generation ended: count it in the usage stats and the Prometheus metrics."""
    if isinstance(ev, m.Finished):
        u = ev.usage
        app.state.usage.finished(cmd.model, u.prompt_tokens, u.completion_tokens, u.cached_tokens,
                                 max(ev.total_s - ev.ttft_s, 0.0))
        app.state.metrics.finished(cmd.model, u.prompt_tokens, u.completion_tokens, u.cached_tokens, ev.ttft_s,
                                   ev.total_s)
    else:
        app.state.usage.error(ev.kind)
        app.state.metrics.errors.labels(ev.kind).inc()


async def _save_usage(usage, every: float = 5.0) -> None:
    while True:
        await asyncio.sleep(every)
        await asyncio.to_thread(usage.save)
