"""Incremental detokenization that never emits half a UTF-8 character."""
from __future__ import annotations


class IncrementalDecoder:
    """Decodes a growing token list, emitting only settled text.

    Decodes a short window (from prefix_offset) so cost stays constant per token; text
    ending in U+FFFD is an incomplete byte sequence and is held back until completed.
    """

    def __init__(self, decode):
        self.decode = decode
        self.tokens: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, token: int) -> str:
        self.tokens.append(token)
        prefix = self.decode(self.tokens[self.prefix_offset:self.read_offset])
        full = self.decode(self.tokens[self.prefix_offset:])
        if full.endswith("\ufffd") or len(full) < len(prefix):
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.tokens)
        return full[len(prefix):]

    def flush(self) -> str:
        """Whatever is left at the end; bytes of a character the output never finished (a reply
        cut mid-character) are dropped, never sent as U+FFFD."""
        prefix = self.decode(self.tokens[self.prefix_offset:self.read_offset])
        full = self.decode(self.tokens[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.tokens)
        return full[len(prefix):].rstrip("\ufffd")
