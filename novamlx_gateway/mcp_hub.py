"""The MCP client: servers the operator configures, their tools offered as `{server}__{tool}`.

Each enabled server holds one connection through the official `mcp` SDK's Client, kept open by a
task of its own: stdio (the SDK starts the command as a subprocess), SSE, or streamable HTTP.
Tools are listed on connect, again when the server says its list changed, and every minute. A
server that cannot be reached or dies is retried with growing pauses; its status and last error
are what the admin API shows. A call has the server's timeout; a hung or dead server is a clear
error for that call, never a stuck request.

Servers come from the settings file (`[[mcp_servers]]` tables) and from the admin API, which keeps
its own in <data_dir>/mcp_servers.json (atomic writes; an admin entry replaces a file entry of the
same name).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import APIError

log = logging.getLogger("novamlx.mcp")

NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
SEP = "__"
TRANSPORTS = ("stdio", "sse", "http")
RELIST_EVERY = 60.0


@dataclass
class ServerConfig:
    name: str
    transport: str = "stdio"
    command: str = ""  # stdio
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""  # sse, http
    headers: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    timeout: float = 30.0  # seconds per call (and for connecting)

    @classmethod
    def parse(cls, data) -> "ServerConfig":
        """Checked: a bad entry is a 400 naming its field."""
        if not isinstance(data, dict):
            raise APIError(400, "An MCP server is a JSON object.", "invalid_value")
        known = set(cls.__dataclass_fields__)
        extra = set(data) - known
        if extra:
            raise APIError(400, f"Unknown MCP server field(s): {', '.join(sorted(extra))}.", "invalid_value",
                           sorted(extra)[0])
        name = data.get("name")
        if not isinstance(name, str) or not NAME.match(name) or SEP in name:
            raise APIError(400, "`name`: 1-48 letters, digits, '-' or '_' (no '__').", "invalid_value", "name")
        cfg = cls(name=name)
        for key in ("transport", "command", "url"):
            if key in data:
                if not isinstance(data[key], str):
                    raise APIError(400, f"`{key}` must be a string.", "invalid_type", key)
                setattr(cfg, key, data[key])
        if cfg.transport not in TRANSPORTS:
            raise APIError(400, f"`transport` must be one of {', '.join(TRANSPORTS)}.", "invalid_value", "transport")
        if "args" in data:
            if not isinstance(data["args"], list) or not all(isinstance(a, str) for a in data["args"]):
                raise APIError(400, "`args` must be a list of strings.", "invalid_type", "args")
            cfg.args = list(data["args"])
        for key in ("env", "headers"):
            if key in data:
                v = data[key]
                if not isinstance(v, dict) or not all(isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
                    raise APIError(400, f"`{key}` must map strings to strings.", "invalid_type", key)
                setattr(cfg, key, dict(v))
        if "enabled" in data:
            if not isinstance(data["enabled"], bool):
                raise APIError(400, "`enabled` must be true or false.", "invalid_type", "enabled")
            cfg.enabled = data["enabled"]
        if "timeout" in data:
            t = data["timeout"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.1 <= t <= 3600:
                raise APIError(400, "`timeout` must be 0.1 to 3600 seconds.", "invalid_value", "timeout")
            cfg.timeout = float(t)
        if cfg.transport == "stdio" and not cfg.command:
            raise APIError(400, "A stdio server needs a `command`.", "invalid_value", "command")
        if cfg.transport != "stdio" and not cfg.url.startswith(("http://", "https://")):
            raise APIError(400, "An sse or http server needs an http(s) `url`.", "invalid_value", "url")
        return cfg

    def public(self) -> dict:
        """As the admin API shows it: environment and header values hidden (they hold secrets)."""
        out = asdict(self)
        out["env"] = {k: "***" for k in self.env}
        out["headers"] = {k: "***" for k in self.headers}
        return out


class Connection:
    """One server: a task that keeps the SDK's Client open and its tool list fresh."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.client = None
        self.tools: list = []  # the SDK's Tool objects
        self.status = "disabled" if not cfg.enabled else "connecting"
        self.last_error: str | None = None
        self.connected_at: float | None = None
        self.task: asyncio.Task | None = None
        self.changed = asyncio.Event()  # the server said its tools changed

    def start(self) -> None:
        if self.cfg.enabled and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing a broken connection
                pass
            self.task = None
        self.client, self.tools = None, []
        self.status = "disabled" if not self.cfg.enabled else "stopped"

    def _spec(self):
        if self.cfg.transport == "stdio":
            from mcp.client.stdio import StdioServerParameters

            env = {**os.environ, **self.cfg.env} if self.cfg.env else None
            return StdioServerParameters(command=self.cfg.command, args=self.cfg.args, env=env)
        if self.cfg.transport == "sse":
            from mcp.client.sse import sse_client

            return sse_client(self.cfg.url, headers=self.cfg.headers or None)
        if self.cfg.headers:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            return streamable_http_client(self.cfg.url, http_client=httpx2.AsyncClient(headers=self.cfg.headers))
        return self.cfg.url

    async def _on_message(self, message) -> None:
        if "ToolListChanged" in type(getattr(message, "root", message)).__name__:
            self.changed.set()

    async def _run(self) -> None:
        from mcp import Client

        pause = 1.0
        while True:
            self.status = "connecting"
            try:
                async with asyncio.timeout(self.cfg.timeout):
                    client = Client(self._spec(), read_timeout_seconds=self.cfg.timeout,
                                    message_handler=self._on_message)
                    await client.__aenter__()
                try:
                    self.client = client
                    await self._relist()
                    self.status, self.last_error, self.connected_at, pause = "ready", None, time.time(), 1.0
                    log.info("MCP server %s ready: %d tools", self.cfg.name, len(self.tools))
                    while True:  # relist on change or every minute; a failure reconnects
                        try:
                            async with asyncio.timeout(RELIST_EVERY):
                                await self.changed.wait()
                        except TimeoutError:
                            pass
                        self.changed.clear()
                        await self._relist()
                finally:
                    self.client = None
                    try:
                        await client.__aexit__(None, None, None)
                    except Exception:  # noqa: BLE001 - the server may already be gone
                        pass
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001 - any failure is this server's status, then a retry
                self.status, self.tools = "error", []
                self.last_error = _describe(e)
                log.warning("MCP server %s: %s (retrying in %.0f s)", self.cfg.name, self.last_error, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)

    async def _relist(self) -> None:
        async with asyncio.timeout(self.cfg.timeout):
            result = await self.client.list_tools(cache_mode="refresh")  # (the SDK's cache would hide a change)
        self.tools = list(result.tools)

    async def call(self, tool: str, arguments: dict):
        if self.status != "ready" or self.client is None:
            raise APIError(503, f"MCP server `{self.cfg.name}` is not connected ({self.status}"
                                f"{': ' + self.last_error if self.last_error else ''}).", "mcp_server_unavailable")
        try:
            async with asyncio.timeout(self.cfg.timeout):
                return await self.client.call_tool(tool, arguments)
        except TimeoutError:
            raise APIError(504, f"MCP server `{self.cfg.name}` did not answer `{tool}` within {self.cfg.timeout:g} s.",
                           "mcp_timeout") from None
        except APIError:
            raise
        except Exception as e:  # noqa: BLE001 - a dead server or a protocol error: this call's error
            self.changed.set()  # (a vanished tool shows at the next listing)
            raise APIError(502, f"MCP server `{self.cfg.name}` failed on `{tool}`: {_describe(e)}", "mcp_call_failed") \
                from None


def _describe(e: BaseException) -> str:
    """One line for an error, unwrapping the exception groups anyio raises."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def tool_result(result) -> dict:
    """An MCP CallToolResult as JSON: its content blocks, the text of the text blocks, is_error."""
    blocks = [b.model_dump(mode="json", exclude_none=True, by_alias=True) if hasattr(b, "model_dump") else dict(b)
              for b in result.content]
    text = "\n".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    out = {"content": blocks, "text": text, "is_error": bool(getattr(result, "is_error", False))}
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        out["structured_content"] = structured
    return out


class McpHub:
    def __init__(self, configured: list, data_dir: Path):
        self.file = Path(data_dir) / "mcp_servers.json"
        self.configured = {}
        for entry in configured or []:
            try:
                cfg = ServerConfig.parse(entry)
            except APIError as e:
                raise SystemExit(f"mcp_servers: {e.message}") from None
            self.configured[cfg.name] = cfg
        self.added = self._load()
        self.conns: dict[str, Connection] = {}

    def _load(self) -> dict[str, ServerConfig]:
        try:
            data = json.loads(self.file.read_text())
            return {c.name: c for c in (ServerConfig.parse(d) for d in data)}
        except FileNotFoundError:
            return {}
        except (ValueError, APIError) as e:
            log.warning("ignoring unreadable %s: %s", self.file, getattr(e, "message", e))
            return {}

    def _save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps([asdict(c) for c in self.added.values()], indent=1))
        os.replace(tmp, self.file)

    def configs(self) -> dict[str, ServerConfig]:
        return {**self.configured, **self.added}

    async def start(self) -> None:
        for cfg in self.configs().values():
            self.conns[cfg.name] = conn = Connection(cfg)
            conn.start()

    async def stop(self) -> None:
        for conn in list(self.conns.values()):
            await conn.stop()

    async def put(self, cfg: ServerConfig) -> dict:
        """Add or replace a server (kept in the data dir) and connect it."""
        old = self.conns.pop(cfg.name, None)
        if old is not None:
            await old.stop()
        self.added[cfg.name] = cfg
        self._save()
        self.conns[cfg.name] = conn = Connection(cfg)
        conn.start()
        return self.describe(conn)

    async def remove(self, name: str) -> None:
        if name not in self.added and name not in self.configured:
            raise APIError(404, f"No MCP server `{name}`.", "mcp_server_not_found", "name")
        if name in self.configured and name not in self.added:
            raise APIError(409, f"MCP server `{name}` comes from the settings file; disable it instead.",
                           "mcp_server_configured", "name")
        self.added.pop(name)
        self._save()
        conn = self.conns.pop(name, None)
        if conn is not None:
            await conn.stop()
        if name in self.configured:  # the settings file's entry of that name comes back
            await self.put_configured(name)

    async def put_configured(self, name: str) -> None:
        self.conns[name] = conn = Connection(self.configured[name])
        conn.start()

    async def set_enabled(self, name: str, enabled: bool) -> dict:
        cfg = self.configs().get(name)
        if cfg is None:
            raise APIError(404, f"No MCP server `{name}`.", "mcp_server_not_found", "name")
        return await self.put(ServerConfig(**{**asdict(cfg), "enabled": enabled}))

    def describe(self, conn: Connection) -> dict:
        return {**conn.cfg.public(), "status": conn.status, "last_error": conn.last_error,
                "connected_at": conn.connected_at, "tools": [t.name for t in conn.tools],
                "source": "admin" if conn.cfg.name in self.added else "settings"}

    def servers(self) -> list[dict]:
        return [self.describe(c) for c in self.conns.values()]

    def tools(self, servers: list[str] | None = None) -> list[dict]:
        """Every ready server's tools, as OpenAI function tools named `{server}__{tool}`."""
        out = []
        for name, conn in self.conns.items():
            if conn.status != "ready" or (servers is not None and name not in servers):
                continue
            for t in conn.tools:
                schema = getattr(t, "input_schema", None) or getattr(t, "inputSchema", None) or {"type": "object"}
                out.append({"type": "function", "function": {
                    "name": f"{name}{SEP}{t.name}", "description": t.description or "", "parameters": schema}})
        return out

    async def execute(self, name: str, arguments) -> dict:
        if not isinstance(name, str) or SEP not in name:
            raise APIError(400, "`name` is `{server}__{tool}` (GET /v1/mcp/tools lists them).", "invalid_value", "name")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise APIError(400, "`arguments` must be a JSON object.", "invalid_type", "arguments")
        server, tool = name.split(SEP, 1)
        conn = self.conns.get(server)
        if conn is None:
            raise APIError(404, f"No MCP server `{server}`.", "mcp_server_not_found", "name")
        if conn.status == "ready" and not any(t.name == tool for t in conn.tools):
            raise APIError(404, f"MCP server `{server}` has no tool `{tool}`.", "mcp_tool_not_found", "name")
        return tool_result(await conn.call(tool, arguments))
