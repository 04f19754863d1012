"""OpenAI-shaped errors: one exception type, one renderer, the handlers Starlette needs."""
from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger("novamlx.gateway")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error",
          409: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error",
          504: "timeout_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None, type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic(self) -> tuple[int, dict]:
        """Anthropic's shape and status mapping (overload is 529 there)."""
        status = 529 if self.status == 503 else self.status
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return status, {"type": "error", "error": {"type": kind, "message": self.message}}

    def render(self, path: str) -> tuple[int, dict]:
        """(status, body) in the wire format of the route that failed."""
        return self.anthropic() if is_anthropic(path) else (self.status, self.body())


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                    415: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 504: "timeout_error",
                    529: "overloaded_error"}


# The worker's error kinds (protocol.messages.ERROR_KINDS) and the gateway's own, as HTTP
# statuses; the kind is also the wire's error code. Anything else is the client's fault: 400.
KIND_STATUS = {"model_not_found": 404, "model_busy": 409, "out_of_memory": 503, "model_load_failed": 500,
               "internal_error": 500, "worker_crashed": 503, "worker_crashed_on_request": 500,
               "server_shutting_down": 503, "upstream_error": 502, "upstream_unreachable": 502}


def worker_error(ev, rename: dict | None = None) -> APIError:
    """A protocol Error event as this gateway's APIError; `rename` maps protocol field names to
    the route's own (Responses: messages -> input)."""
    status = KIND_STATUS.get(ev.kind, 400)
    field = (rename or {}).get(ev.field, ev.field) if ev.field else None
    return APIError(status, ev.message, ev.kind, field, headers={"retry-after": "1"} if status == 503 else None)


def is_anthropic(path: str) -> bool:
    return path.startswith("/v1/messages") or path.startswith("/anthropic/")


def openai_error(status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None) -> JSONResponse:
    err = APIError(status, message, code, param, headers)
    return JSONResponse(err.body(), status_code=status, headers=err.headers)


async def api_error_handler(request: Request, exc: APIError) -> JSONResponse:
    worker = getattr(request.app.state, "worker", None)
    if 400 <= exc.status < 500 and worker is not None:  # rejected requests by kind, for /health and its log
        key = exc.code or str(exc.status)
        worker.rejected[key] = worker.rejected.get(key, 0) + 1
    status, body = exc.render(request.url.path)
    return JSONResponse(body, status_code=status, headers=exc.headers)


async def http_error_handler(request: Request, exc: HTTPException) -> JSONResponse:
    message = {404: f"Unknown request URL: {request.method} {request.url.path}.",
               405: f"Method {request.method} is not allowed for {request.url.path}."}.get(exc.status_code, str(exc.detail))
    code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
    return await api_error_handler(request, APIError(exc.status_code, message, code, headers=getattr(exc, "headers", None)))


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return await api_error_handler(request, APIError(500, "The server had an error while processing your request.",
                                                     "internal_error"))


HANDLERS = {APIError: api_error_handler, HTTPException: http_error_handler, Exception: unhandled_error_handler}
