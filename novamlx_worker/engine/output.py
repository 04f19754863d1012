"""What the client sees of one sequence's tokens: text, thinking, tool calls, logprobs.

Tokens come in (a list per step: speculative decoding accepts several at once); one delta
comes out. The detokenizer, stop strings, reasoning splitter and tool-call parsers are one
set per sequence and live here, so the engine never handles text.
"""
from __future__ import annotations

from dataclasses import dataclass

from protocol import messages as m

from ..sampling import token_logprobs
from ..text.detok import IncrementalDecoder
from ..text.reasoning import ReasoningSplitter
from ..text.stops import StopMatcher
from ..text.tool_parsers import ToolCallParser


def logprob_entry(tok, token: int, logprob: float, alts) -> m.TokenLogprob:
    top = [m.TopLogprob(tok.token_text(t), v, list(tok.token_bytes(t))) for t, v in alts]
    return m.TokenLogprob(tok.token_text(token), logprob, list(tok.token_bytes(token)), top)


def echo_delta(tok, seq, rows: list | None) -> m.Delta:
    """The prompt given back (echo), with its logprobs when `rows` (one per prompt token after
    the first, from the model's prompt forward) are given."""
    text = tok.decode(seq.prompt)
    if rows is None:
        return m.Delta(seq.id, text=text, echo=True)
    scored = token_logprobs(rows, seq.prompt[1:], [seq.top_logprobs] * len(rows))
    first = m.TokenLogprob(tok.token_text(seq.prompt[0]), None, list(tok.token_bytes(seq.prompt[0])))
    rest = [logprob_entry(tok, t, lp, alts) for t, (lp, alts) in zip(seq.prompt[1:], scored)]
    return m.Delta(seq.id, text=text, logprobs=[first, *rest], echo=True)


@dataclass
class Step:
    """One step's result for one sequence: its delta (None: nothing to show yet) and, at the
    end, why it ended and the stop string that ended it."""
    delta: m.Delta | None
    reason: str | None = None
    stop: str | None = None
    used: int = 0  # tokens of the step that count (a stop string can end it early)


class Output:
    def __init__(self, rid: str, tokenizer, stops: list[str], reasoning: ReasoningSplitter | None = None,
                 tools: ToolCallParser | None = None):
        self.id = rid
        self.tokenizer = tokenizer
        self.decoder = IncrementalDecoder(tokenizer.decode_visible)
        self.stops = StopMatcher(stops)
        self.reasoning = reasoning
        self.tools = tools
        self.tools_in_thinking: ToolCallParser | None = None  # some models call tools from inside their thinking
        self.tool_index = 0  # tool calls emitted so far (their OpenAI indices)

    def feed(self, tokens: list[int], finish: str | None = None, logprobs: list | None = None) -> Step:
        """New tokens; `finish` is the decode path's reason for the last one ("stop" for an end
        token, which is not shown; "length"). `logprobs`: (logprob, alternatives) per token."""
        text, hit, shown = "", None, []
        for i, token in enumerate(tokens):
            eos = finish == "stop" and i == len(tokens) - 1
            piece, hit = self.stops.feed("" if eos else self.decoder.add(token))
            text += piece
            if logprobs is not None and logprobs[i] is not None and not eos:
                shown.append(logprob_entry(self.tokenizer, token, *logprobs[i]))
            if hit is not None:
                tokens = tokens[: i + 1]
                break
        reason = "stop" if hit is not None else finish
        if reason is not None and hit is None:  # the end: what the decoder and stop matcher held back
            text += self.stops.feed(self.decoder.flush())[0] + self.stops.flush()
        text, thought, calls = self._split(text, reason)
        if reason == "stop" and self.tool_index:
            reason = "tool_calls"
        delta = None
        if text or shown or calls or thought:
            delta = m.Delta(self.id, text=text, logprobs=shown or None, tool_calls=calls, reasoning=thought)
        return Step(delta, reason, hit, len(tokens))

    def _split(self, text: str, reason: str | None):
        """(answer text, thinking text, tool calls) of this step's text."""
        thought = ""
        if self.reasoning is not None:
            text, thought = self.reasoning.feed(text)
            if reason is not None:
                more, more_thought = self.reasoning.finish()
                text, thought = text + more, thought + more_thought
        calls = None
        if self.tools is not None:
            final = None if reason is None else reason == "length"  # None: not the end; True: cut
            text, calls = self._tool_calls(self.tools, text, final)
            if thought:
                self.tools_in_thinking = self.tools_in_thinking or ToolCallParser(self.tools.families)
                thought, inner = self._tool_calls(self.tools_in_thinking, thought, final)
                calls = (calls or []) + (inner or []) or None
        return text, thought, calls

    def _tool_calls(self, parser: ToolCallParser, text: str, final: bool | None):
        """Content and finished tool calls out of this step's text. final: None mid-answer,
        False at its end, True at an end cut by max_tokens."""
        content, calls = parser.feed(text)
        if final is not None:
            more, tail = parser.finish(cut=final)
            content, calls = content + more, calls + tail
        first = self.tool_index
        self.tool_index += len(calls)
        deltas = [m.ToolCallDelta(first + i, c.id, c.name, c.arguments, c.incomplete) for i, c in enumerate(calls)]
        return content, deltas or None
