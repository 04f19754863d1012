"""A Generate command becomes a Sequence, or a RequestError saying why it cannot.

Tokenize (chat template, plain prompt, token ids or a VLM's processor), fit max_tokens in the
context window, price the KV it will hold, compile its grammar, and build its Output. Everything
it needs comes in as arguments: it knows no engine, pool or budget.
"""
from __future__ import annotations

from dataclasses import dataclass

from protocol import messages as m

from ..faults import scripted_output
from ..grammar import GrammarError, compile_format, tool_call_grammar
from ..models.loader import LoadedModel
from ..text.chat import encode_messages
from ..text.reasoning import ReasoningSplitter
from ..text.tool_parsers import ToolCallParser, families_for
from .errors import RequestError
from .output import Output
from .sessions import Sessions
from .sequence import Sequence


@dataclass
class Limits:
    """What the server allows one request on this model now."""
    window: int  # context window (the model's, or the per-model setting)
    default_max_tokens: int
    kv_budget: int  # KV bytes the server could ever give one request
    kv_bytes_per_token: int


def prompt_ids(lm: LoadedModel, messages, prompt, prompt_tokens, tools=None, template_kwargs=None) -> list[int]:
    tok = lm.tokenizer
    if messages is not None:
        try:
            return encode_messages(tok, messages, tools, template_kwargs)
        except Exception as e:  # a template that rejects the conversation (jinja raise_exception)
            raise RequestError(f"The chat template rejected the messages: {e}", "invalid_messages", "messages")
    if prompt_tokens is not None:
        bad = [t for t in prompt_tokens if not 0 <= t < tok.vocab_size]
        if bad:
            raise RequestError(f"Token id {bad[0]} is outside the vocabulary (0..{tok.vocab_size - 1}).",
                               "invalid_value", "prompt")
        return list(prompt_tokens)
    return tok.encode(prompt or "")


def vision_inputs(lm: LoadedModel, cmd):
    """A VLM's processor output for a Generate or CountTokens command."""
    from ..models.vision import images_of, prepare, render_prompt

    if getattr(cmd, "prompt_tokens", None) is not None:
        raise RequestError("Token-id prompts are not supported for vision-language models.", "invalid_value", "prompt")
    try:
        if cmd.messages is not None:
            kw = dict(getattr(cmd, "template_kwargs", None) or {}, **({"tools": cmd.tools} if cmd.tools else {}))
            prompt, images = render_prompt(lm.vision, cmd.messages, kw), images_of(cmd.messages)
        else:
            prompt, images = cmd.prompt or "", []
        return prepare(lm.model, lm.vision, prompt, images)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise RequestError(f"The images or prompt could not be processed for `{lm.id}`: {e}", "invalid_image",
                           "messages") from None


def count_tokens(lm: LoadedModel, cmd: m.CountTokens) -> int:
    if lm.vision is not None:
        return vision_inputs(lm, cmd).input_ids.shape[1]
    return len(prompt_ids(lm, cmd.messages, cmd.prompt, None, cmd.tools))


def _max_tokens(cmd: m.Generate, n_prompt: int, limits: Limits) -> int:
    """The completion's length: the request's, fitted to the window where the wire allows it."""
    room, s = limits.window - n_prompt, cmd.sampling
    if room <= 0 or (s.max_tokens is not None and s.max_tokens > room and not cmd.fit_max_tokens):
        asked = (f" However, you requested {n_prompt + s.max_tokens} tokens ({n_prompt} in the prompt, {s.max_tokens} "
                 "in the completion)." if s.max_tokens else f" However, your prompt has {n_prompt} tokens.")
        raise RequestError(f"This model's maximum context length is {limits.window} tokens.{asked} "
                           "Please reduce the length of the prompt or the completion.",
                           "context_length_exceeded", "messages" if cmd.messages is not None else "prompt")
    return min(s.max_tokens, room) if s.max_tokens else min(room, limits.default_max_tokens)


def _grammar(cmd: m.Generate) -> str | None:
    try:
        if cmd.force_tool:
            return tool_call_grammar(cmd.tools, cmd.force_tool)
        if cmd.sampling.response_format:
            return compile_format(cmd.sampling.response_format)
    except GrammarError as e:
        field = "tool_choice" if cmd.force_tool else "response_format"
        raise RequestError(str(e), f"invalid_{field}", field) from None
    return None


def _output(cmd: m.Generate, lm: LoadedModel, ids: list[int], turn_stops: list[str], tool_parser: str) -> Output:
    tools = ToolCallParser(families_for(lm.tokenizer.chat_template, tool_parser)) if cmd.parse_tools else None
    reasoning = None
    if cmd.messages is not None and not cmd.sampling.response_format:
        opened = lm.tokenizer.decode(ids[-3:]).rstrip().endswith("<think>")  # the template opened it
        reasoning = ReasoningSplitter(implicit_open=opened)
    return Output(cmd.id, lm.tokenizer, cmd.sampling.stop + turn_stops, reasoning, tools)


def build(cmd: m.Generate, lm: LoadedModel, limits: Limits, turn_stops: list[str], tool_parser: str) -> Sequence:
    vision = None
    if lm.vision is not None:  # (images reach only VLMs: the gateway refuses them for other models)
        if cmd.echo and cmd.sampling.logprobs:
            raise RequestError("echo with logprobs is not available for vision-language models.", "invalid_value",
                               "echo")
        vision = vision_inputs(lm, cmd)
        ids = vision.input_ids[0].tolist()
    else:
        ids = prompt_ids(lm, cmd.messages, cmd.prompt, cmd.prompt_tokens, cmd.tools, cmd.template_kwargs)
    if not ids:
        if lm.tokenizer.bos_id is None:
            raise RequestError("The prompt is empty.", "invalid_value", "prompt")
        ids = [lm.tokenizer.bos_id]
    max_tokens = _max_tokens(cmd, len(ids), limits)
    seq = Sequence(cmd.id, lm.id, ids, cmd.sampling, max_tokens, _output(cmd, lm, ids, turn_stops, tool_parser),
                   priority=cmd.priority, vision=vision, grammar=_grammar(cmd), speculative=cmd.speculative,
                   session=Sessions.check_id(cmd.session) if cmd.session else None)
    seq.kv_bytes = (len(ids) + max_tokens) * limits.kv_bytes_per_token
    script = scripted_output(cmd.messages)
    if script is not None:
        eos = lm.tokenizer.eos_ids[-1:] or [0]
        seq.script = lm.tokenizer.encode(script, add_special=False) + eos
    if seq.kv_bytes > limits.kv_budget:
        raise RequestError(
            f"This request needs {seq.kv_bytes / 1024**2:.1f} MB of KV cache ({len(ids)} prompt + {max_tokens} "
            f"completion tokens), more than the {limits.kv_budget / 1024**2:.1f} MB this server can ever give one "
            "request under its memory limit. Lower max_tokens or shorten the prompt.", "kv_budget_exceeded",
            "max_tokens")
    return seq
