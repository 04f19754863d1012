"""POST /v1/rerank (aliases /rerank, /v2/rerank): Cohere- and Jina-shaped reranking.

Results carry index and relevance_score, sorted best first; `document` when asked for.
`normalize: "minmax"` rescales the scores of one request to [0, 1] (the spec's option);
the default keeps the raw score (a cross-encoder's logit, or cosine similarity).
"""
from __future__ import annotations

import uuid
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse

from protocol import messages as m

from ..errors import APIError
from ..generation import model_or_404
from .common import parse_body
from .limits import MAX_DOCUMENTS, check_count, check_prompt_text


class RerankRequest(msgspec.Struct, kw_only=True):
    query: str
    documents: list[Any]
    model: str | None = None
    top_n: int | None = None
    return_documents: bool = False
    normalize: str | None = None  # None | "minmax"


def _texts(docs: list[Any]) -> list[str]:
    out = []
    for i, d in enumerate(docs):
        text = d if isinstance(d, str) else (d.get("text") if isinstance(d, dict) else None)
        if not isinstance(text, str) or not text.strip():
            raise APIError(400, f"Invalid 'documents[{i}]': expected a non-empty string or an object with 'text'.",
                           "invalid_value", f"documents[{i}]")
        out.append(text)
    return out


async def rerank(request: Request):
    req: RerankRequest = await parse_body(request, RerankRequest)
    worker = request.app.state.worker
    if not req.query.strip():
        raise APIError(400, "Invalid 'query': it must not be empty.", "invalid_value", "query")
    if not req.documents:
        raise APIError(400, "Invalid 'documents': send at least one document.", "invalid_value", "documents")
    if req.normalize not in (None, "none", "minmax"):
        raise APIError(400, "Invalid 'normalize': use 'minmax' or leave it out.", "invalid_value", "normalize")
    name = req.model or next((i.id for i in worker.models if i.kind == "rerank"), None) or \
        next((i.id for i in worker.models if i.kind == "embedding"), "")
    info = model_or_404(worker, name, ("rerank", "embedding"))
    check_count(req.documents, MAX_DOCUMENTS, "documents", "documents")
    texts = _texts(req.documents)
    check_prompt_text([req.query, *texts], request.app.state.config.max_prompt_mb, "documents")
    res = await worker.call(m.Rerank(f"rr_{uuid.uuid4().hex[:16]}", info.id, req.query, texts),
                            timeout=request.app.state.config.request_timeout)
    scores = res.scores
    if req.normalize == "minmax":
        lo, hi = min(scores), max(scores)
        scores = [(s - lo) / (hi - lo) if hi > lo else 1.0 for s in scores]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    top = len(order) if req.top_n is None else max(1, min(req.top_n, len(order)))
    results = []
    for i in order[:top]:
        r = {"index": i, "relevance_score": scores[i]}
        if req.return_documents:
            r["document"] = {"text": texts[i]}
        results.append(r)
    return JSONResponse({"id": f"rerank-{uuid.uuid4().hex[:16]}", "object": "rerank", "model": info.id,
                         "results": results, "method": res.method,
                         "usage": {"total_tokens": res.tokens, "prompt_tokens": res.tokens},
                         "meta": {"billed_units": {"search_units": 1}, "tokens": {"input_tokens": res.tokens}}})
