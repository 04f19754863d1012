"""Line framing: one JSON message a line, typed decoding that rejects junk."""
from __future__ import annotations

import msgspec

from .messages import Command, Event

_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.json.Decoder(Command)
_event_decoder = msgspec.json.Decoder(Event)

# The pipe carries whole engine steps; lines can be large at high batch sizes.
LINE_LIMIT = 64 * 1024 * 1024


def encode(message) -> bytes:
    return _encoder.encode(message) + b"\n"


def decode_command(line: bytes | str):
    return _command_decoder.decode(line)


def decode_event(line: bytes | str):
    return _event_decoder.decode(line)
