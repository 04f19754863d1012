"""A generation's deltas as content blocks: thinking, text and tool calls, in the order the
model produced them. Anthropic Messages and Responses render the same block events, each in
its own wire (content_block_* events; output_item / content_part events).

A block opens when its kind starts, takes pieces, and stops when another kind begins or the
generation ends. A tool call arrives whole from the worker (or cut by max_tokens, marked
incomplete): it is one block with one piece, its arguments. An empty answer is one empty
text block, as both APIs send it.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from protocol import messages as m

from ..generation import Generation


@dataclass
class Block:
    index: int
    kind: str  # thinking | text | tool_call
    call: m.ToolCallDelta | None = None
    parts: list[str] = field(default_factory=list)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass
class Start:
    block: Block


@dataclass
class Piece:
    block: Block
    text: str


@dataclass
class Stop:
    block: Block


class Blocks:
    """feed(delta) and finish() -> block events; `blocks` holds every block so far."""

    def __init__(self):
        self.blocks: list[Block] = []
        self.open: Block | None = None

    def _new(self, kind: str, call: m.ToolCallDelta | None = None) -> Block:
        block = Block(len(self.blocks), kind, call)
        self.blocks.append(block)
        return block

    def _close(self) -> list:
        if self.open is None:
            return []
        block, self.open = self.open, None
        return [Stop(block)]

    def _into(self, kind: str, text: str) -> list:
        out = []
        if self.open is None or self.open.kind != kind:
            out += self._close()
            self.open = self._new(kind)
            out.append(Start(self.open))
        self.open.parts.append(text)
        out.append(Piece(self.open, text))
        return out

    def feed(self, d: m.Delta) -> list:
        out = []
        if d.reasoning:
            out += self._into("thinking", d.reasoning)
        if d.text:
            out += self._into("text", d.text)
        for call in d.tool_calls or []:
            out += self._close()
            block = self._new("tool_call", call)
            block.parts.append(call.arguments)
            out += [Start(block), Piece(block, call.arguments), Stop(block)]
        return out

    def finish(self) -> list:
        out = []
        if not self.blocks:
            self.open = self._new("text")
            out.append(Start(self.open))
        return out + self._close()


async def collect(gen: Generation) -> tuple[list[Block], m.Finished]:
    """A non-streaming answer: every block, and how it finished. Errors raise in the route's words."""
    blocks = Blocks()
    finished = None
    async for _, ev in gen.events():
        if isinstance(ev, m.Delta):
            blocks.feed(ev)
        elif isinstance(ev, m.Finished):
            finished = ev
        elif isinstance(ev, m.Error):
            raise gen.error(ev)
    blocks.finish()
    return blocks.blocks, finished


def close_json(text: str):
    """The JSON object a cut-off text was becoming, as far as it got ({} if nothing parses):
    open strings and brackets are closed; a dangling key or partial literal is dropped."""
    cuts = [len(text)] + [i for i in range(len(text) - 1, -1, -1) if text[i] in ",{["][:64]
    for cut in cuts:
        head = text[:cut].rstrip().rstrip(",")
        stack, in_str, esc = [], False, False
        for ch in head:
            if in_str:
                esc, in_str = (not esc and ch == "\\"), in_str and (esc or ch != '"')
            elif ch == '"':
                in_str = True
            elif ch in "{[":
                stack.append("}" if ch == "{" else "]")
            elif ch in "}]" and stack:
                stack.pop()
        if in_str:  # close the string (a trailing lone backslash would escape the quote: drop it)
            head = (head[:-1] if esc else head) + '"'
        try:
            value = json.loads(head + "".join(reversed(stack)))
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return {}
