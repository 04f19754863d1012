"""Protocol chat messages -> the model's chat template, tools included.

Templates that know tools (they mention `tools` / `tool_calls`) get them natively. For the
rest, tool schemas go into the system prompt and past calls into the assistant text in
the widely trained Hermes form (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`),
so a conversation with tools still reads coherently to the model.
"""
from __future__ import annotations

import json

from protocol.messages import ChatMessage

from .tokenizer import TextTokenizer


def _arguments(text: str):
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return text


def _native(messages: list[ChatMessage]) -> list[dict]:
    out = []
    for m in messages:
        d: dict = {"role": m.role, "content": m.content or ""}
        if m.name:
            d["name"] = m.name
        if m.tool_calls:
            d["tool_calls"] = [{"id": c.id, "type": "function",
                                "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                               for c in m.tool_calls]
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def _inline(messages: list[ChatMessage], tools: list[dict] | None) -> list[dict]:
    out = []
    if tools:
        desc = ("You can call these tools. To call one, answer with <tool_call>{\"name\": NAME, \"arguments\": "
                "{...}}</tool_call>.\n<tools>\n" + "\n".join(json.dumps(t) for t in tools) + "\n</tools>")
        if messages and messages[0].role == "system":
            out.append({"role": "system", "content": (messages[0].content or "") + "\n\n" + desc})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": desc})
    for m in messages:
        content = m.content or ""
        if m.tool_calls:
            calls = "\n".join("<tool_call>\n" + json.dumps({"name": c.name, "arguments": _arguments(c.arguments)})
                              + "\n</tool_call>" for c in m.tool_calls)
            content = (content + "\n" if content else "") + calls
        if m.role == "tool":
            content = f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": m.role, "content": content})
    return out


def knows_tools(tok: TextTokenizer) -> bool:
    t = tok.chat_template or ""
    return "tool_calls" in t or "tools" in t


def encode_messages(tok: TextTokenizer, messages: list[ChatMessage], tools: list[dict] | None = None,
                    template_kwargs: dict | None = None) -> list[int]:
    kw = template_kwargs or {}
    if knows_tools(tok):
        return tok.encode_chat(_native(messages), tools=tools, **kw)
    return tok.encode_chat(_inline(messages, tools), **kw)
