"""GET /v1/models and GET /v1/models/{id}."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..generation import model_or_404


def _model_obj(info) -> dict:
    return {"id": info.id, "object": "model", "created": info.created, "owned_by": "novamlx",
            "context_length": info.context_length}


async def list_models(request: Request):
    worker = request.app.state.worker
    return JSONResponse({"object": "list", "data": [_model_obj(i) for i in worker.models]})


async def get_model(request: Request):
    info = model_or_404(request.app.state.worker, request.path_params["model"], ("llm", "embedding", "rerank"))
    return JSONResponse(_model_obj(info))
