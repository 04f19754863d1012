"""Per-request caps, checked before any model work.

The body limit bounds bytes on the wire; these bound the work one request can ask of the
worker: prompt text (tokenizing 40 MB of text takes gigabytes), tools and their schemas,
documents to rerank, inputs to embed. Sizes answer 413, counts 400, each naming its field.
"""
from __future__ import annotations

import msgspec

from ..errors import APIError

MAX_TOOLS = 128  # OpenAI's own limit per request
MAX_TOOLS_BYTES = 2 * 1024**2  # every tool definition together, as JSON
MAX_DOCUMENTS = 10_000  # Cohere's limit per rerank request
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per embeddings request


def _too_large(param: str, what: str, size: int, limit: int) -> APIError:
    return APIError(413, f"Invalid '{param}': {what} is {size / 1024**2:.1f} MB, more than this server's limit of "
                         f"{limit / 1024**2:.1f} MB per request (max_prompt_mb).", "request_too_large", param)


def check_prompt_text(texts, limit_mb: float, param: str) -> None:
    """The prompt's text, all strings together, against the configured cap."""
    limit = int(limit_mb * 1024**2)
    total = 0
    for t in texts:
        total += len(t.encode("utf-8", "surrogatepass")) if t else 0
        if total > limit:
            raise _too_large(param, "the prompt text", total, limit)


def message_texts(messages):
    for msg in messages or []:
        yield msg.content
        for call in msg.tool_calls or []:
            yield call.arguments


def check_tools(tools: list | None, param: str = "tools") -> None:
    if not tools:
        return
    if len(tools) > MAX_TOOLS:
        raise APIError(400, f"Invalid '{param}': {len(tools)} tools; at most {MAX_TOOLS} are supported.",
                       "invalid_value", param)
    size = len(msgspec.json.encode(tools))
    if size > MAX_TOOLS_BYTES:
        raise _too_large(param, "the tool definitions", size, MAX_TOOLS_BYTES)


def check_count(items: list, limit: int, param: str, what: str) -> None:
    if len(items) > limit:
        raise APIError(400, f"Invalid '{param}': {len(items)} {what}; at most {limit} per request.", "invalid_value",
                       param)
