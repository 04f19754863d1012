"""Split reasoning (`<think>...</think>`) from the answer while it streams.

Reasoning is recognised when the output opens with the think tag, or when the prompt
already opened it (templates that end the generation prompt with `<think>`: the output
then closes a tag it never opened). Partial tags are held back until they resolve, so a
half-streamed `</thi` never reaches either side.
"""
from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


class ReasoningSplitter:
    def __init__(self, implicit_open: bool = False):
        self.state = "thinking" if implicit_open else "start"  # start -> thinking -> answer
        self.buf = ""
        self.after_close = False  # drop the newlines that follow </think>

    def feed(self, text: str) -> tuple[str, str]:
        """(answer text, reasoning text) safe to emit now."""
        self.buf += text
        answer, reasoning = "", ""
        while True:
            if self.state == "start":
                stripped = self.buf.lstrip()
                if stripped.startswith(OPEN):
                    self.buf = stripped[len(OPEN):]
                    self.state = "thinking"
                    continue
                if OPEN.startswith(stripped) and stripped:  # could still become the tag
                    return answer, reasoning
                if not stripped:
                    return answer, reasoning
                self.state = "answer"
                continue
            if self.state == "thinking":
                i = self.buf.find(CLOSE)
                if i >= 0:
                    reasoning += self.buf[:i]
                    self.buf = self.buf[i + len(CLOSE):]
                    self.state = "answer"
                    self.after_close = True
                    continue
                keep = next((n for n in range(min(len(CLOSE) - 1, len(self.buf)), 0, -1)
                             if CLOSE.startswith(self.buf[-n:])), 0)
                reasoning += self.buf[: len(self.buf) - keep]
                self.buf = self.buf[len(self.buf) - keep:]
                return answer, reasoning
            if self.after_close:
                self.buf = self.buf.lstrip("\n")
                self.after_close = not self.buf
            answer += self.buf
            self.buf = ""
            return answer, reasoning

    def finish(self) -> tuple[str, str]:
        out, self.buf = self.buf, ""
        return (out, "") if self.state != "thinking" else ("", out)
