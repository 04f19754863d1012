"""GET /v1/models and GET /v1/models/{id}."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..generation import model_or_404
from .cloud_proxy import model_object


def _model_obj(info) -> dict:
    return {"id": info.id, "object": "model", "created": info.created, "owned_by": "novamlx",
            "context_length": info.context_length}


async def list_models(request: Request):
    worker = request.app.state.worker
    cloud = [model_object(c) for c in request.app.state.cloud.values()]
    return JSONResponse({"object": "list", "data": [_model_obj(i) for i in worker.models] + cloud})


async def get_model(request: Request):
    cloud = request.app.state.cloud.get(request.path_params["model"])
    if cloud is not None:
        return JSONResponse(model_object(cloud))
    info = model_or_404(request.app.state.worker, request.path_params["model"], ("llm", "vlm", "embedding", "rerank"))
    return JSONResponse(_model_obj(info))
