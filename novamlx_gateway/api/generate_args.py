"""One wire-neutral generation request, and the one place that turns it into worker commands.

Every generating route (OpenAI chat and completions, Anthropic messages, Responses) maps its
body's fields onto `GenerateArgs` and calls `start_generation`, which resolves the model,
applies the model's settings (sampling defaults, max_tokens, seed, thinking budget), checks
every bound, builds one `Generate` per choice and starts them. Errors name the route's own
fields: a `Wire` says what each API calls the shared fields and how it bounds them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
from starlette.requests import Request

from protocol import messages as m
from protocol.naming import SESSION_ID

from .. import images
from ..errors import APIError
from ..generation import Generation, model_or_404
from .cloud_proxy import CloudGeneration, chat_body
from .limits import check_prompt_text, check_tools, message_texts


@dataclass(frozen=True)
class Wire:
    """How one API names and bounds the shared fields."""
    name: str
    temperature_max: float = 2.0
    fields: dict = field(default_factory=dict)  # canonical name -> this API's name
    window_ceiling: bool = False  # max_tokens past the context window is a ceiling, not an error

    def field(self, name: str) -> str:
        return self.fields.get(name, name)


CHAT = Wire("chat", fields={"template_kwargs": "chat_template_kwargs", "session": "session_id"})
COMPLETIONS = Wire("completions", fields={"messages": "prompt", "session": "session_id"})
# Anthropic bounds temperature to [0, 1]; agents send max_tokens far past a small model's window.
MESSAGES = Wire("messages", temperature_max=1.0, window_ceiling=True,
                fields={"prompt": "messages", "session": "session_id", "stop": "stop_sequences", "thinking_budget": "thinking.budget_tokens",
                        "reasoning_effort": "thinking", "response_format": "messages"})
RESPONSES = Wire("responses", window_ceiling=True,
                 fields={"messages": "input", "prompt": "input", "session": "session_id", "max_tokens": "max_output_tokens",
                         "response_format": "text.format", "reasoning_effort": "reasoning.effort",
                         "thinking_budget": "reasoning.effort"})

# Largest max_tokens taken at face value: past it (and past the window) is a ceiling or an error.
MAX_TOKENS_CAP = 2**31 - 1
SEED_RANGE = (-(2**63), 2**64 - 1)  # OpenAI documents a 64-bit integer seed
EFFORT_BUDGET = {"minimal": 256, "low": 1024, "medium": 4096, "high": 16384}
# Chat-template variables the server itself passes: a client's value would clash with (or replace) them.
RESERVED_TEMPLATE_KWARGS = {"messages", "conversation", "tools", "documents", "add_generation_prompt", "tokenize",
                            "return_dict", "continue_final_message", "chat_template", "tokenizer"}


@dataclass
class GenerateArgs:
    """What a client asked for, in no API's words; None means "not given" (a default applies)."""
    model: str
    messages: list[m.ChatMessage] | None = None  # chat: the worker applies the template
    prompts: list[dict] | None = None  # legacy completions: [{"prompt": str} | {"prompt_tokens": [int]}]
    tools: list[dict] | None = None
    parse_tools: bool = False
    force_tool: str | None = None  # "required" or a function name
    template_kwargs: dict | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    response_format: dict | None = None
    reasoning_effort: str | None = None  # minimal | low | medium | high | none
    thinking_budget: int | None = None
    enable_thinking: bool | None = None
    n: int = 1
    echo: bool = False
    priority: int = 0
    speculative: bool | None = None  # False: no speculative drafts (the server's setting otherwise)
    session: str | None = None  # a session id (body session_id or the x-session-id header)
    route_max_tokens: int | None = None  # this route's own default (legacy completions: 16)


def _bad(wire: Wire, name: str, message: str, code: str = "invalid_value") -> APIError:
    param = wire.field(name)
    return APIError(400, f"Invalid '{param}': {message}", code, param)


def _range(wire: Wire, name: str, value, lo, hi) -> None:
    if value is not None and not (lo <= value <= hi):
        raise _bad(wire, name, f"{value} is not within [{lo}, {hi}].")


def validate(a: GenerateArgs, wire: Wire, max_n: int, max_prompt_mb: float = 8.0) -> None:
    """Every bound, in the route's words; raises before any model work."""
    texts = message_texts(a.messages) if a.prompts is None else (p.get("prompt") for p in a.prompts)
    check_prompt_text(texts, max_prompt_mb, wire.field("messages"))
    check_tools(a.tools)
    if a.session is not None and not SESSION_ID.fullmatch(a.session):
        raise _bad(wire, "session", "a session id is 1-128 letters, digits, '.', '_' or '-'.")
    clash = sorted(RESERVED_TEMPLATE_KWARGS & set(a.template_kwargs or {}))
    if clash:
        raise _bad(wire, "template_kwargs", f"{', '.join(clash)} cannot be set here: the server passes "
                                            f"{'it' if len(clash) == 1 else 'them'} to the chat template itself "
                                            "(send tools and messages as the request's own fields).")
    _range(wire, "temperature", a.temperature, 0, wire.temperature_max)
    _range(wire, "top_p", a.top_p, 0, 1)
    _range(wire, "min_p", a.min_p, 0, 1)
    _range(wire, "frequency_penalty", a.frequency_penalty, -2, 2)
    _range(wire, "presence_penalty", a.presence_penalty, -2, 2)
    _range(wire, "repetition_penalty", a.repetition_penalty, 0.01, 10)
    _range(wire, "top_logprobs", a.top_logprobs, 0, 20)
    _range(wire, "seed", a.seed, *SEED_RANGE)
    if a.top_k is not None and a.top_k < -1:
        raise _bad(wire, "top_k", f"{a.top_k}; use -1 or 0 to disable, or a positive number.")
    if a.max_tokens is not None and a.max_tokens < 1:
        raise _bad(wire, "max_tokens", f"integer below minimum value. Expected a value >= 1, but got {a.max_tokens} "
                                       "instead.", "integer_below_min_value")
    if a.max_tokens is not None and a.max_tokens > MAX_TOKENS_CAP and not wire.window_ceiling:
        raise _bad(wire, "max_tokens", f"{a.max_tokens} is larger than any context window ({MAX_TOKENS_CAP}).")
    if len(a.stop) > 16:
        raise _bad(wire, "stop", "at most 16 stop sequences are supported.")
    if not 1 <= a.n <= max_n:
        raise _bad(wire, "n", f"{a.n}; this server supports 1 to {max_n} choices.")
    if a.prompts is not None and len(a.prompts) * a.n > max_n:
        raise _bad(wire, "n", f"{len(a.prompts)} prompts x n={a.n} exceeds {max_n} choices.")
    if a.reasoning_effort is not None and a.reasoning_effort != "none" and a.reasoning_effort not in EFFORT_BUDGET:
        raise _bad(wire, "reasoning_effort", f"{a.reasoning_effort!r}; use none, {', '.join(EFFORT_BUDGET)}.")
    if a.thinking_budget is not None and not 0 <= a.thinking_budget <= MAX_TOKENS_CAP:
        raise _bad(wire, "thinking_budget", f"{a.thinking_budget} is not within [0, {MAX_TOKENS_CAP}].")


def _thinking(a: GenerateArgs, defaults: dict) -> tuple[int | None, dict | None]:
    """(thinking token budget, chat-template variables) from the several ways clients ask."""
    kwargs = dict(a.template_kwargs or {})
    budget, enable = a.thinking_budget, a.enable_thinking
    if a.reasoning_effort == "none":
        enable = False
    elif a.reasoning_effort is not None and budget is None:
        budget = EFFORT_BUDGET[a.reasoning_effort]
    if budget is None:
        budget = defaults.get("thinking_budget")
    if enable is not None:
        kwargs["enable_thinking"] = enable
    return budget, kwargs or None


def sampling(a: GenerateArgs, defaults: dict) -> m.Sampling:
    """The request's values over the model's settings over the built-in defaults."""
    def pick(name, builtin):
        value = getattr(a, name)
        return value if value is not None else defaults.get(name, builtin)

    max_tokens = a.max_tokens if a.max_tokens is not None else defaults.get("max_tokens", a.route_max_tokens)
    return m.Sampling(
        temperature=pick("temperature", 1.0), top_p=pick("top_p", 1.0), top_k=max(pick("top_k", 0), 0),
        min_p=pick("min_p", 0.0), frequency_penalty=pick("frequency_penalty", 0.0),
        presence_penalty=pick("presence_penalty", 0.0), repetition_penalty=pick("repetition_penalty", 1.0),
        seed=pick("seed", None), max_tokens=min(max_tokens, MAX_TOKENS_CAP) if max_tokens is not None else None,
        stop=[s for s in a.stop if s], logprobs=a.logprobs, top_logprobs=a.top_logprobs, ignore_eos=a.ignore_eos,
        response_format=a.response_format)


def _choice_seed(s: m.Sampling, j: int) -> m.Sampling:
    """Choice j of n: with a seed, each choice gets its own (seed + j) so they differ, reproducibly."""
    return msgspec.structs.replace(s, seed=s.seed + j) if j and s.seed is not None else s


def to_commands(a: GenerateArgs, model_id: str, defaults: dict, wire: Wire, base: str) -> list[m.Generate]:
    """One Generate per choice (per prompt, for legacy completions); ids are `{base}-{i}`."""
    s = sampling(a, defaults)
    s.thinking_budget, template_kwargs = _thinking(a, defaults)
    inputs = [{"messages": a.messages}] if a.prompts is None else a.prompts
    return [m.Generate(f"{base}-{pi * a.n + j}", model_id, _choice_seed(s, j), tools=a.tools,
                       parse_tools=a.parse_tools, force_tool=a.force_tool, template_kwargs=template_kwargs,
                       echo=a.echo, priority=a.priority, fit_max_tokens=wire.window_ceiling,
                       speculative=a.speculative is not False, session=a.session if j == 0 else None, **inp)
            for pi, inp in enumerate(inputs) for j in range(a.n)]


async def start_generation(request: Request, a: GenerateArgs, wire: Wire,
                           base: str | None = None) -> tuple[m.ModelInfo, Generation]:
    """Resolve, validate, build and start: every error so far comes before the first byte."""
    state = request.app.state
    cfg = state.config
    a.session = a.session or request.headers.get("x-session-id") or None
    validate(a, wire, cfg.max_n, cfg.max_prompt_mb)
    cloud = state.cloud.get(a.model)
    if cloud is not None:  # a remote model: its chat completions, read back as our events
        gen = CloudGeneration(cloud, chat_body(cloud, a), cfg.request_timeout)
        await gen.start()
        return m.ModelInfo(cloud.id, "cloud"), gen
    info = model_or_404(state.worker, a.model)
    if a.messages is not None:
        await images.resolve(a.messages, cfg, info)
    defaults = state.settings.sampling_defaults(info.id)
    cmds = to_commands(a, info.id, defaults, wire, base or Generation.new_id())
    gen = Generation(state.worker, cmds, cfg.request_timeout, state.admission, a.n, rename=wire.fields)
    await gen.start()
    return info, gen
