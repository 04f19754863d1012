"""Line framing: one JSON message a line, typed decoding that rejects junk."""
from __future__ import annotations

import json

import msgspec

from .messages import Command, Event

_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.json.Decoder(Command)
_event_decoder = msgspec.json.Decoder(Event)

# The pipe carries whole engine steps; lines can be large at high batch sizes.
LINE_LIMIT = 64 * 1024 * 1024


def encode(message) -> bytes:
    return _encoder.encode(message) + b"\n"


def encode_ascii(message) -> bytes:
    """The same line with non-ASCII text as \\u escapes: for channels that may cut a UTF-8
    character in two (mlx.launch relays a rank's stdout in chunks it decodes on its own)."""
    line = _encoder.encode(message)
    if line.isascii():
        return line + b"\n"
    return json.dumps(json.loads(line), ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def decode_command(line: bytes | str):
    return _command_decoder.decode(line)


def decode_event(line: bytes | str):
    return _event_decoder.decode(line)


def line_id(line: bytes | str) -> str | None:
    """The request id of a line that did not decode as its type, if it has one: so that its
    request gets an error instead of waiting for an answer that never comes."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) else None
