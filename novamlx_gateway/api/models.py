"""GET /v1/models and GET /v1/models/{id}."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import APIError


def _model_obj(info) -> dict:
    return {"id": info.id, "object": "model", "created": info.created, "owned_by": "novamlx",
            "context_length": info.context_length}


async def list_models(request: Request):
    worker = request.app.state.worker
    return JSONResponse({"object": "list", "data": [_model_obj(i) for i in worker.models]})


async def get_model(request: Request):
    name = request.path_params["model"]
    info = request.app.state.worker.resolve_model(name)
    if info is None:
        raise APIError(404, f"The model `{name}` does not exist or you do not have access to it.", "model_not_found", "model")
    return JSONResponse(_model_obj(info))
