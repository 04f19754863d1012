"""Structured output enforced at token level with llguidance.

A request's JSON schema (or "any JSON object") is compiled once into a matcher per
sequence; before each sample the matcher's allowed-token bitmask masks the logits, and the
sampled token is fed back. The tokenizer view llguidance needs is built once per model.
"""
from __future__ import annotations

import json

import mlx.core as mx
import numpy as np

_TOKENIZERS: dict[int, object] = {}


class GrammarError(ValueError):
    pass


def ll_tokenizer(tok, vocab_size: int):
    """llguidance's view of a TextTokenizer, cached (building it takes about a second)."""
    key = id(tok)
    if key not in _TOKENIZERS:
        import llguidance.hf
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_object=tok.tok)
        _TOKENIZERS[key] = llguidance.hf.from_tokenizer(hf, n_vocab=vocab_size, eos_token=tok.eos_ids[-1])
    return _TOKENIZERS[key]


def compile_format(fmt: dict) -> str:
    """A response_format ({"type": "json_object"} / {"type": "json_schema", "schema": ...}) as a grammar."""
    from llguidance import LLMatcher

    kind = fmt.get("type")
    if kind == "json_object":
        schema = {"type": "object"}
    elif kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise GrammarError("response_format.json_schema.schema must be a JSON Schema object")
    else:
        raise GrammarError(f"unsupported response_format type {kind!r}")
    try:
        grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults={"whitespace_flexible": False})
    except ValueError as e:
        raise GrammarError(f"invalid JSON schema: {e}") from None
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise GrammarError(f"invalid JSON schema: {'; '.join(messages)}")
    return grammar


def tool_call_grammar(tools: list[dict], force: str) -> str:
    """A grammar for exactly one `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`:
    of the named function, or of any of the tools ("required"); arguments follow its schema."""
    from llguidance import LLMatcher

    fns = [t.get("function", t) for t in tools or []]
    if force != "required":
        fns = [f for f in fns if f.get("name") == force]
        if not fns:
            raise GrammarError(f"tool_choice names `{force}`, which is not among the tools")
    if not fns:
        raise GrammarError("tool_choice requires a tool call, but no tools were given")
    options = [{"type": "object", "properties": {"name": {"const": f["name"]},
                                                 "arguments": f.get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": False} for f in fns]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    schema["x-guidance"] = {"whitespace_flexible": False}  # compact JSON: no runaway whitespace
    grammar = f'start: "<tool_call>" call "</tool_call>"\ncall: %json {json.dumps(schema)}\n'
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise GrammarError(f"invalid tool parameters schema: {'; '.join(messages)}")
    return grammar


class GrammarProcessor:
    """A logits processor (context, logits) -> logits that only allows what the grammar allows.
    It follows the context it is called with: tokens new since the last call are consumed, and
    tokens it consumed that the context no longer holds (a speculative draft that was not kept)
    are rolled back first, so drafting steps may call it on hypothetical continuations."""

    drafts = True  # safe to call on draft positions (spec_batch.py)
    rules_out = True  # masks tokens with -inf: a draft token it rules out ends the draft there
    TAIL = 64  # drafts differ from what was consumed only this close to the end

    def __init__(self, grammar: str, tokenizer, vocab_size: int, prior: list[int] | None = None):
        from llguidance import LLMatcher

        self.matcher = LLMatcher(ll_tokenizer(tokenizer, vocab_size), grammar)
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())
        self.vocab = vocab_size
        self.eos = tokenizer.eos_ids[-1]
        self.words = (vocab_size + 31) // 32
        self.base: int | None = None  # set at the first call: the context so far is prompt
        self.fed: list[int] = []  # tokens consumed since then
        for t in prior or []:  # tokens generated before a preemption or a move into the batch
            self.matcher.consume_token(int(t))

    def _follow(self, context: mx.array) -> None:
        if self.base is None:
            self.base = context.size
        start = max(0, min(len(self.fed), context.size - self.base) - self.TAIL)
        tail = context[self.base + start:].tolist()
        same = start
        while same < len(self.fed) and same - start < len(tail) and self.fed[same] == tail[same - start]:
            same += 1
        if same < len(self.fed):
            self.matcher.rollback(len(self.fed) - same)
            del self.fed[same:]
        for t in tail[same - start:]:
            self.matcher.consume_token(int(t))
            self.fed.append(int(t))

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        self._follow(context)
        if self.matcher.is_stopped() or self.matcher.is_error():
            allowed = np.zeros(logits.shape[-1], dtype=bool)
            allowed[self.eos] = True
        else:
            mask = np.zeros(self.words, dtype=np.int32)
            self.matcher.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
            bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[: self.vocab].astype(bool)
            allowed = np.zeros(logits.shape[-1], dtype=bool)
            allowed[: len(bits)] = bits
        return mx.where(mx.array(allowed)[None], logits, mx.array(-float("inf"), dtype=logits.dtype))
