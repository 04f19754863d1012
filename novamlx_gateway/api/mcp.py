"""GET /v1/mcp/tools and POST /v1/mcp/execute: the configured MCP servers' tools (mcp_hub.py),
listed as OpenAI function tools and run one call at a time."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from .common import parse_body


async def mcp_tools(request: Request):
    return JSONResponse({"object": "list", "data": request.app.state.mcp.tools()})


async def mcp_execute(request: Request):
    """{"name": "server__tool", "arguments": {...}} -> {"content": [...], "text", "is_error"}."""
    body = await parse_body(request, dict)
    return JSONResponse(await request.app.state.mcp.execute(body.get("name"), body.get("arguments")))
