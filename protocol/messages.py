"""Typed messages between the gateway and the worker.

Commands flow gateway -> worker, events flow worker -> gateway. Every message is a
tagged msgspec Struct; one JSON object per line. Request ids multiplex many
concurrent requests over the one pipe.
"""
from __future__ import annotations

import msgspec

PROTOCOL_VERSION = 4  # 4: Error carries a kind and a field, no HTTP status


class Sampling(msgspec.Struct, omit_defaults=True):
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None  # None: up to the context window
    stop: list[str] = []
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    # {"type": "json_object"} or {"type": "json_schema", "schema": {...}}: enforced by grammar
    response_format: dict | None = None
    thinking_budget: int | None = None  # reasoning tokens before </think> is forced


class ToolCall(msgspec.Struct, omit_defaults=True):
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI carries it


class ImageRef(msgspec.Struct):
    sha256: str  # of the image file's bytes
    path: str  # the checked file the gateway stored (content-addressed)


class Part(msgspec.Struct, omit_defaults=True):
    """One piece of a multimodal message, in order."""
    type: str  # text | image
    text: str | None = None
    image: ImageRef | None = None
    source: str | None = None  # gateway-side only: the URL, data URI or path before it is fetched


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: str  # system, user, assistant, tool
    content: str | None = None  # the text (all text parts joined)
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant turns that called tools
    tool_call_id: str | None = None  # tool turns: the call they answer
    parts: list[Part] | None = None  # set when the message has images: text and images in order


# ---- commands (gateway -> worker) ----

class Generate(msgspec.Struct, tag="generate", omit_defaults=True):
    id: str
    model: str
    sampling: Sampling = msgspec.field(default_factory=Sampling)
    messages: list[ChatMessage] | None = None  # chat: the worker applies the template
    tools: list[dict] | None = None  # function schemas ({"type": "function", "function": {...}})
    parse_tools: bool = False  # turn tool-call markup in the output into tool calls
    force_tool: str | None = None  # "required" (any tool) or a function name: enforced by grammar
    template_kwargs: dict | None = None  # extra chat-template variables, e.g. {"enable_thinking": false}
    prompt: str | None = None  # raw text
    prompt_tokens: list[int] | None = None  # raw token ids
    echo: bool = False  # return the prompt (and its logprobs) first
    priority: int = 0
    # max_tokens past the context window is a ceiling (Anthropic, Responses), not an error
    # (OpenAI chat/completions answer it with context_length_exceeded, as OpenAI does)
    fit_max_tokens: bool = False
    speculative: bool = True  # False: never draft for this request (speculative decoding, when configured)
    session: str | None = None  # continue from (and leave the state in) this session (engine/sessions.py)


class SessionOp(msgspec.Struct, tag="session", omit_defaults=True):
    """Admin: list | delete | save | restore | fork a session (answered by a Result)."""
    id: str
    op: str
    session: str = ""
    new_session: str = ""  # fork: the copy's id
    model: str | None = None  # restore: refuse a session of another model


class Abort(msgspec.Struct, tag="abort"):
    id: str


class Perplexity(msgspec.Struct, tag="perplexity", omit_defaults=True):
    """The perplexity of one text under a model (answered by a Result: perplexity, tokens)."""
    id: str
    model: str
    text: str
    chunk: int = 512


class CountTokens(msgspec.Struct, tag="count_tokens", omit_defaults=True):
    id: str
    model: str
    messages: list[ChatMessage] | None = None
    tools: list[dict] | None = None
    prompt: str | None = None


class Settings(msgspec.Struct, tag="settings", omit_defaults=True):
    """Change worker settings at run time; answered by a Result carrying the memory state."""
    id: str
    max_process_memory: str | None = None


class Embed(msgspec.Struct, tag="embed", omit_defaults=True):
    id: str
    model: str
    texts: list[str] | None = None
    tokens: list[list[int]] | None = None
    truncate: bool = False  # cut inputs longer than the model's window instead of refusing them
    input_type: str | None = None  # the model's prompt to put before each text (query, document, ...)


class Rerank(msgspec.Struct, tag="rerank", omit_defaults=True):
    id: str
    model: str
    query: str
    documents: list[str]


class LoadModel(msgspec.Struct, tag="load_model", omit_defaults=True):
    id: str
    spec: str  # a folder, a .gguf file or a hub id on disk
    pin: bool = False


class UnloadModel(msgspec.Struct, tag="unload_model"):
    id: str
    model: str


class Found(msgspec.Struct, omit_defaults=True):
    path: str  # a folder or a .gguf file
    kind: str = "llm"  # llm | vlm | embedding | rerank


class Register(msgspec.Struct, tag="register"):
    """Models found on disk: servable from now on, loaded on first use."""
    id: str
    models: list[Found]


class Forget(msgspec.Struct, tag="forget"):
    """Unload a model and stop serving it (its files are being deleted)."""
    id: str
    model: str


class Policy(msgspec.Struct, omit_defaults=True):
    ttl_seconds: int = 0  # unload after this long idle; 0: never
    pinned: bool = False
    max_context_window: int = 0  # 0: the model's own
    kv_bits: int | None = None  # KV cache quantization: 0 off, 2-8 bits; None: the worker's default
    kv_group_size: int = 64
    draft_model: str | None = None  # a smaller model with the same tokenizer that drafts for this one
    num_draft_tokens: int = 0  # 0: the worker's default


class Policies(msgspec.Struct, tag="policies"):
    """Per-model settings the worker applies itself; the whole map each time."""
    id: str
    models: dict[str, Policy]


class Stats(msgspec.Struct, tag="stats"):
    """The worker's numbers now (a Health snapshot), answered by a Result at once."""
    id: str


class Ping(msgspec.Struct, tag="ping"):
    nonce: int


class Shutdown(msgspec.Struct, tag="shutdown"):
    pass


Command = (Generate | Abort | CountTokens | Perplexity | Embed | Rerank | Settings | LoadModel | UnloadModel | Register | Forget
           | Policies | SessionOp | Stats | Ping | Shutdown)


# ---- events (worker -> gateway) ----

class ModelInfo(msgspec.Struct, omit_defaults=True):
    id: str
    kind: str = "llm"
    context_length: int = 0
    created: int = 0
    path: str = ""
    aliases: list[str] = []
    loaded: bool = True


class Hello(msgspec.Struct, tag="hello", omit_defaults=True):
    version: int
    pid: int
    models: list[ModelInfo] = []
    capabilities: list[str] = []


class Started(msgspec.Struct, tag="started", omit_defaults=True):
    id: str
    prompt_tokens: int
    cached_tokens: int = 0


class TopLogprob(msgspec.Struct, array_like=True):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(msgspec.Struct, omit_defaults=True):
    token: str
    logprob: float | None  # None for the first echoed prompt token
    bytes: list[int]
    top: list[TopLogprob] = []


class ToolCallDelta(msgspec.Struct, omit_defaults=True):
    index: int  # 0, 1, ... per call in this answer
    id: str
    name: str
    arguments: str  # the whole JSON arguments of a finished call (of a cut one: as far as they got)
    incomplete: bool = False  # cut by max_tokens before the call's end


class Delta(msgspec.Struct, omit_defaults=True):
    """What one sequence produced in one engine step; canonical, not wire-shaped."""
    id: str
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    echo: bool = False  # this delta is the echoed prompt
    tool_calls: list[ToolCallDelta] | None = None
    reasoning: str = ""  # thinking text, split from the answer


class Step(msgspec.Struct, tag="step"):
    """One message per engine step carrying the deltas of every sequence that advanced."""
    deltas: list[Delta]


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class Finished(msgspec.Struct, tag="finished", omit_defaults=True):
    id: str
    finish_reason: str  # "stop" | "length" | "tool_calls" | "abort"
    usage: Usage
    ttft_s: float = 0.0
    total_s: float = 0.0
    stop: str | None = None


# How a request failed; the gateway picks each kind's HTTP status and words per wire format.
ERROR_KINDS = (
    "invalid_value", "invalid_request", "invalid_messages", "invalid_image", "invalid_model", "invalid_tool_choice",
    "invalid_response_format", "context_length_exceeded", "kv_budget_exceeded",  # the request itself
    "model_not_found", "model_busy",  # the model it names
    "out_of_memory", "model_load_failed", "internal_error",  # the worker
)


class Error(msgspec.Struct, tag="error", omit_defaults=True):
    """A request failed. `kind` is one of ERROR_KINDS; `field` names the request field at
    fault by its protocol name (messages, prompt, max_tokens, model, ...): no HTTP here."""
    id: str
    message: str
    kind: str = "internal_error"
    field: str | None = None


class Result(msgspec.Struct, tag="result", omit_defaults=True):
    id: str
    tokens: int = 0
    data: dict = {}


class Embeddings(msgspec.Struct, tag="embeddings"):
    id: str
    vectors: list[list[float]]  # pooled and L2-normalised, one per input
    tokens: int


class Scores(msgspec.Struct, tag="scores"):
    id: str
    scores: list[float]  # one per document, higher is more relevant
    tokens: int
    method: str  # "cross-encoder" or "bi-encoder"


class Models(msgspec.Struct, tag="models"):
    """The servable models changed (a load, an unload): the full list, as in hello."""
    models: list[ModelInfo]


class Pong(msgspec.Struct, tag="pong"):
    nonce: int


class Health(msgspec.Struct, tag="health", omit_defaults=True):
    pid: int
    rss_bytes: int
    mlx_active_bytes: int
    mlx_peak_bytes: int
    mlx_cache_bytes: int
    models: list[str]
    running: int
    queued: int
    tokens_per_s: float
    engine_heartbeat_age_s: float
    time: float
    memory: dict = {}  # the enforcer's state: mode, limit, used, refusing
    engine: dict = {}  # scheduler metrics: active, queue depth, totals, peak, average wait
    prefix_cache: dict = {}  # per model: blocks, hits, misses, tokens saved, evictions; "ssd"
    kv_reserved_bytes: int = 0
    steps: int = 0  # batched decode steps since start
    tokens_total: int = 0
    peak_batch: int = 0  # most sequences decoded in one forward
    ranks: list[dict] = []  # a sharded model: [{"rank", "rss_bytes"}] for every rank
    device: str = ""  # MLX's default device, e.g. "Device(gpu, 0)"


Event = Hello | Started | Step | Finished | Error | Result | Embeddings | Scores | Models | Pong | Health
