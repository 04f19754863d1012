"""Admin: the MCP servers (mcp_hub.py). GET /admin/api/mcp/servers (status, last error, tools),
POST .../servers (add or replace one), DELETE .../servers/{name}, POST .../servers/{name}/enable
or /disable, GET /admin/api/mcp/tools."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import APIError
from ..mcp_hub import ServerConfig
from .common import json_body


async def mcp_servers(request: Request):
    hub = request.app.state.mcp
    if request.method == "POST":
        return JSONResponse(await hub.put(ServerConfig.parse(await json_body(request))), status_code=201)
    return JSONResponse({"servers": hub.servers()})


async def mcp_server(request: Request):
    hub, name = request.app.state.mcp, request.path_params["name"]
    action = request.path_params.get("action")
    if request.method == "DELETE":
        await hub.remove(name)
        return JSONResponse({"deleted": name})
    if action not in ("enable", "disable"):
        raise APIError(404, f"Unknown action `{action}`: enable or disable.", "not_found")
    return JSONResponse(await hub.set_enabled(name, action == "enable"))


async def mcp_tools(request: Request):
    return JSONResponse({"tools": request.app.state.mcp.tools()})
