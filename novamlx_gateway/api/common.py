"""What every route shares before it speaks its own wire: the typed body, the priority."""
from __future__ import annotations

import json
import re

import msgspec
from starlette.requests import Request

from ..errors import APIError


_PATH = re.compile(r"at `\$\.?([^`]*)`")


async def parse_body(request: Request, kind: type):
    ctype = request.headers.get("content-type", "")
    if "json" not in ctype.split(";")[0].lower():
        raise APIError(415, f"Unsupported content type {ctype or '(none)'!r}: send 'Content-Type: application/json'.",
                       "unsupported_media_type")
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "The request body is empty; expected a JSON object.", "invalid_json")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as e:
        text = str(e)
        found = _PATH.search(text)
        param = found.group(1) if found else None
        if text.startswith("Object missing required field"):
            field = text.split("`")[1]
            param = f"{param}.{field}" if param else field
            raise APIError(400, f"Missing required parameter: '{param}'.", "missing_required_parameter", param)
        raise APIError(400, f"Invalid value for '{param or 'body'}': {text}", "invalid_type", param)
    except msgspec.DecodeError as e:
        raise APIError(400, f"We could not parse the JSON body of your request: {e}. Send a valid JSON object.",
                       "invalid_json")
    except RecursionError:
        raise APIError(400, "The JSON body is nested too deeply.", "invalid_json") from None


PRIORITIES = {"low": -1, "normal": 0, "high": 1}


def priority_of(request: Request, value: str | int | None = None) -> int:
    """Scheduling priority from the body's `priority` or the `x-priority` header: low, normal, high."""
    raw = value if value is not None else request.headers.get("x-priority")
    if raw is None or raw == "":
        return 0
    if isinstance(raw, int) and not isinstance(raw, bool):
        return max(-1, min(1, raw))
    key = str(raw).strip().lower()
    if key in PRIORITIES:
        return PRIORITIES[key]
    raise APIError(400, f"Invalid priority {raw!r}: use low, normal or high.", "invalid_value", "priority")


def arguments_text(args, param: str) -> str:
    """A replayed tool call's arguments as JSON text: a string as sent, an object encoded
    (clients send either), anything else a 400 naming the field."""
    if isinstance(args, (dict, list)):
        return json.dumps(args)
    if args is not None and not isinstance(args, str):
        raise APIError(400, f"Invalid '{param}': expected a JSON string.", "invalid_type", param)
    return args or "{}"
