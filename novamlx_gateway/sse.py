"""Server-sent events framing."""
from __future__ import annotations

import json

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no", "connection": "keep-alive"}
DONE = b"data: [DONE]\n\n"


def data(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def event(name: str, obj) -> bytes:
    return f"event: {name}\n".encode() + data(obj)
