"""Middleware as plain ASGI classes: request ids, API keys, body size limit, Host check,
work cancelled when its client disconnects."""
from __future__ import annotations

import asyncio
import hmac
import json
import uuid

from .errors import APIError

Scope = dict


async def _send_error(send, err: APIError, extra_headers: list | None = None, path: str = ""):
    status, payload = err.render(path)
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


class RequestID:
    """Echo the client's x-request-id or generate one, on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope: Scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        rid = given.decode("latin-1")[:200] if given else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [(b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        await self.app(scope, receive, send_with_id)


class APIKeyAuth:
    """Bearer keys (or x-api-key, as Anthropic clients send) compared in constant time.

    No keys configured: auth is off. Paths in `public` stay open (an entry ending in "/" opens
    everything under it): health, and the chat page with its assets (the page asks for the key).
    """

    def __init__(self, app, keys: list[str], public: tuple[str, ...] = ("/health", "/chat", "/chat/")):
        self.app = app
        self.keys = [k.encode() for k in keys if k]
        self.public = public

    def _authorized(self, headers: dict) -> bool:
        auth = headers.get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        ok = False
        for k in self.keys:  # check every key so timing says nothing about which matched
            ok |= hmac.compare_digest(token, k)
        return ok

    async def __call__(self, scope: Scope, receive, send):
        if scope["type"] != "http" or not self.keys or scope["method"] == "OPTIONS" or is_public(scope["path"], self.public):
            return await self.app(scope, receive, send)
        if not self._authorized(dict(scope["headers"])):
            headers = dict(scope["headers"])
            given = headers.get(b"authorization") or headers.get(b"x-api-key")
            msg = "Incorrect API key provided." if given else "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
            return await _send_error(send, APIError(401, msg, "invalid_api_key"),
                                     [(b"www-authenticate", b'Bearer realm="novamlx"')], scope["path"])
        await self.app(scope, receive, send)


def is_public(path: str, public: tuple[str, ...]) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in public)


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or by counting a streamed body."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        too_big = APIError(413, f"Request body is larger than the limit of {self.max_bytes} bytes.", "request_too_large")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_error(send, too_big, path=scope["path"])
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_big
            return message

        await self.app(scope, counted_receive, send)


LOCAL_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


class HostCheck:
    """Refuse Host headers that name neither this server nor localhost: a web page whose DNS name
    is rebound to 127.0.0.1 must not reach a local server through the user's browser. A server
    bound to all interfaces accepts any host unless allowed_hosts is set."""

    def __init__(self, app, bound: str, allowed: list[str]):
        self.app = app
        self.any = "*" in allowed or (bound in ("0.0.0.0", "::", "") and not allowed)
        self.allowed = _LOCAL_HOSTS | {bound.lower()} | {h.lower() for h in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.any:
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host and name not in self.allowed:
            return await _send_error(send, APIError(421, f"Host {host!r} is not served here (allowed: localhost, "
                                                         "the bound address and --allowed-host).", "invalid_host"),
                                     path=scope.get("path", ""))
        await self.app(scope, receive, send)


class CancelOnDisconnect:
    """A client that hangs up stops its work: once the body is read, the connection is watched,
    and a disconnect cancels the handler (whose generations and worker calls then abort), so an
    abandoned non-streaming request does not hold an admission slot and the worker to the end."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body_read, gone = asyncio.Event(), asyncio.Event()

        async def app_receive():
            if body_read.is_set():  # the connection is the watcher's now: report what it sees
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def watch():
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        handler = asyncio.ensure_future(self.app(scope, app_receive, send))
        watcher, hangup = asyncio.ensure_future(watch()), asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({handler, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            hangup.cancel()
            while not handler.done():  # again if a cancellation is swallowed on its way
                handler.cancel()
                await asyncio.wait({handler}, timeout=0.5)
        if not handler.cancelled():
            handler.result()  # the handler's own exception, as if no middleware were here
