"""A request that asks for MCP tools (`"mcp": true` or a list of server names): the gateway offers
the servers' tools to the model beside the request's own, runs the calls the model makes to
them, and generates again with the results, until the model answers without calling one (or
calls a tool of the client's own, which goes back to the client as usual), at most
`mcp_max_rounds` rounds (default 4, at most 16).

A call that fails (timeout, dead server, bad arguments) becomes an error text in the tool
result, so the model can see it and answer; it never fails the request. The wire formats render
the rounds; this module holds what they share.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from protocol import messages as m

from ..errors import APIError
from ..mcp_hub import SEP

DEFAULT_ROUNDS, MAX_ROUNDS = 4, 16


@dataclass
class McpLoop:
    hub: object
    servers: list[str] | None  # None: every server
    rounds: int
    calls: list[dict] = field(default_factory=list)  # what ran: id, name, arguments, result text, is_error
    usage: list[tuple[int, int, int]] = field(default_factory=list)  # (prompt, completion, cached) per generation

    def owns(self, name: str) -> bool:
        server = name.split(SEP, 1)[0] if SEP in name else None
        return server in self.hub.conns and (self.servers is None or server in self.servers)

    def next_round(self, usage: m.Usage, calls: list[m.ToolCallDelta], finish: str | None) -> bool:
        """Count a finished generation; whether its answer is only calls to MCP tools, to run before
        another generation (after `rounds` tool rounds the calls go to the client)."""
        self.usage.append((usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens))
        return (finish == "tool_calls" and bool(calls) and all(self.owns(c.name) for c in calls)
                and not any(c.incomplete for c in calls) and len(self.usage) <= self.rounds)

    async def run(self, text: str, calls: list[m.ToolCallDelta], messages: list[m.ChatMessage]) -> list[dict]:
        """Run the calls; append the assistant turn and the results to `messages`; return the results."""
        messages.append(m.ChatMessage("assistant", content=text or None,
                                      tool_calls=[m.ToolCall(c.id, c.name, c.arguments) for c in calls]))
        done = []
        for c in calls:
            try:
                args = json.loads(c.arguments or "{}")
                result = await self.hub.execute(c.name, args)
                text_out, is_error = result["text"] or json.dumps(result["content"]), result["is_error"]
            except APIError as e:
                text_out, is_error = f"Error: {e.message}", True
            except ValueError:
                text_out, is_error = "Error: the arguments are not valid JSON.", True
            messages.append(m.ChatMessage("tool", content=text_out, tool_call_id=c.id, name=c.name))
            entry = {"id": c.id, "name": c.name, "arguments": c.arguments, "result": text_out, "is_error": is_error}
            self.calls.append(entry)
            done.append(entry)
        return done

    def ran(self, call_id: str) -> dict | None:
        return next((c for c in self.calls if c["id"] == call_id), None)

    def summary(self) -> dict:
        return {"rounds": len(self.usage), "calls": self.calls}

    def total_usage(self) -> m.Usage:
        """Every round's usage together."""
        return m.Usage(*(sum(u[k] for u in self.usage) for k in range(3)))


async def collected_rounds(gen, loop: McpLoop | None, messages: list[m.ChatMessage], next_round):
    """A non-streaming answer's generations: (blocks, finished, results of the MCP calls run after
    it) per generation; without a loop, the one generation. The usage over all of them is
    loop.total_usage()."""
    from .blocks import collect

    while True:
        blocks, fin = await collect(gen)
        calls = [b.call for b in blocks if b.kind == "tool_call"]
        if loop is None or not loop.next_round(fin.usage, calls, fin.finish_reason):
            yield blocks, fin, []
            return
        yield blocks, fin, await loop.run("".join(b.text for b in blocks if b.kind == "text"), calls, messages)
        _, gen = await next_round()


def mcp_loop_of(request, value, rounds, n: int, tools: list[dict] | None) -> tuple[McpLoop | None, list[dict] | None]:
    """(the loop, the tools to offer) for a request's `mcp` and `mcp_max_rounds` fields."""
    if value in (None, False):
        return None, tools
    if value is True:
        servers = None
    elif isinstance(value, list) and value and all(isinstance(s, str) for s in value):
        servers = value
    else:
        raise APIError(400, "Invalid 'mcp': true, or a list of MCP server names.", "invalid_value", "mcp")
    if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS):
        raise APIError(400, f"Invalid 'mcp_max_rounds': 1 to {MAX_ROUNDS}.", "invalid_value", "mcp_max_rounds")
    if n != 1:
        raise APIError(400, "'mcp' runs one conversation: 'n' must be 1.", "invalid_value", "n")
    hub = request.app.state.mcp
    unknown = [s for s in servers or [] if s not in hub.conns]
    if unknown:
        raise APIError(400, f"Unknown MCP server(s): {', '.join(unknown)}.", "invalid_value", "mcp")
    offered = hub.tools(servers)
    if not offered:
        raise APIError(503, "No MCP server is connected with tools to offer (see /admin/api/mcp/servers).",
                       "mcp_server_unavailable", "mcp")
    return McpLoop(hub, servers, rounds or DEFAULT_ROUNDS), (tools or []) + offered
