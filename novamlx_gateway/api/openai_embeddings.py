"""POST /v1/embeddings: OpenAI's embeddings wire format <-> protocol."""
from __future__ import annotations

import base64
import struct
import uuid
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse

from protocol import messages as m

from ..errors import APIError
from ..generation import model_or_404
from .common import parse_body
from .limits import MAX_EMBEDDING_INPUTS, check_count, check_prompt_text
from .openai_schema import texts_or_tokens


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[Any]
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None
    truncate: bool = False
    input_type: str | None = None  # extension (as Cohere's and Voyage's): the model's prompt name, e.g. query


def _inputs(value, max_prompt_mb: float) -> dict:
    if value == []:
        raise APIError(400, "Invalid 'input': an empty array. Send at least one string or token array.", "invalid_value", "input")
    kind, items = texts_or_tokens(value, "input")
    check_count(items, MAX_EMBEDDING_INPUTS, "input", "inputs")
    if kind == "texts":
        check_prompt_text(items, max_prompt_mb, "input")
    if kind == "texts" and any(x == "" for x in items):
        raise APIError(400, "Invalid 'input': strings must not be empty.", "invalid_value", "input")
    return {kind: items}


def _encode(vec: list[float], fmt: str):
    if fmt == "base64":
        return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
    return vec


def _resize(vec: list[float], dims: int) -> list[float]:
    cut = vec[:dims]
    norm = sum(x * x for x in cut) ** 0.5 or 1.0
    return [x / norm for x in cut]


async def embeddings(request: Request):
    req: EmbeddingsRequest = await parse_body(request, EmbeddingsRequest)
    worker = request.app.state.worker
    info = model_or_404(worker, req.model, ("embedding", "rerank"))
    if req.encoding_format not in ("float", "base64"):
        raise APIError(400, f"Invalid 'encoding_format': {req.encoding_format!r}; use 'float' or 'base64'.",
                       "invalid_value", "encoding_format")
    result = await worker.call(m.Embed(f"emb_{uuid.uuid4().hex[:16]}", info.id, truncate=req.truncate,
                                       input_type=req.input_type,
                                       **_inputs(req.input, request.app.state.config.max_prompt_mb)), timeout=request.app.state.config.request_timeout)
    vectors = result.vectors
    if req.dimensions is not None:
        full = len(vectors[0])
        matryoshka = info.id in request.app.state.config.matryoshka_models
        if req.dimensions == full:
            pass
        elif not (1 <= req.dimensions < full) or not matryoshka:
            raise APIError(400, f"Invalid 'dimensions': {req.dimensions}. Model `{info.id}` returns {full}-dimension "
                                "embeddings and was not trained to be shortened (list it in matryoshka_models to allow it).",
                           "invalid_value", "dimensions")
        else:
            vectors = [_resize(v, req.dimensions) for v in vectors]
    fmt = req.encoding_format
    return JSONResponse({
        "object": "list", "model": info.id,
        "data": [{"object": "embedding", "index": i, "embedding": _encode(v, fmt)}
                 for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
    })
