"""Coding agents pointed at this server: which are installed, and the config each needs.

`novamlx-gateway agents list` finds OpenClaw, Hermes Agent, OpenCode, Claude Code and Codex on
PATH and in the usual install places; `agents config NAME [--write]` prints (or writes, keeping
a backup of the file it replaces) the agent's own config with this server's address, key and
model: OpenClaw JSON, Hermes YAML, OpenCode JSON (or its environment form), Claude Code's
environment (settings.json "env"), Codex config.toml with a Responses provider. The admin API
serves the same (admin/app.py).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

PROVIDER = "novamlx"


@dataclass(frozen=True)
class Agent:
    name: str
    title: str
    binary: str
    path: str  # where its config lives ("~" is the user's home)
    format: str  # json | yaml | toml | env
    install: str  # where to get it


AGENTS = {a.name: a for a in (
    Agent("openclaw", "OpenClaw", "openclaw", "~/.openclaw/openclaw.json", "json", "https://github.com/openclaw/openclaw"),
    Agent("hermes", "Hermes Agent", "hermes", "~/.hermes/config.yaml", "yaml", "https://github.com/NousResearch/hermes-agent"),
    Agent("opencode", "OpenCode", "opencode", "~/.config/opencode/opencode.json", "json", "https://github.com/sst/opencode"),
    Agent("claude-code", "Claude Code", "claude", "~/.claude/settings.json", "json",
          "https://github.com/anthropics/claude-code"),
    Agent("codex", "Codex", "codex", "~/.codex/config.toml", "toml", "https://github.com/openai/codex"),
)}
PLACES = ("~/.local/bin", "~/.npm-global/bin", "~/.bun/bin", "~/.cargo/bin", "~/.hermes/bin", "/usr/local/bin",
          "/opt/homebrew/bin", "node_modules/.bin")


def detect(path_env: str | None = None) -> list[dict]:
    """Every known agent: installed (and where) or not, with its install link and config path."""
    out = []
    for a in AGENTS.values():
        found = shutil.which(a.binary, path=path_env)
        if found is None:
            for place in PLACES:
                candidate = Path(place).expanduser() / a.binary
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    found = str(candidate)
                    break
        out.append({"name": a.name, "title": a.title, "installed": found is not None, "binary": found,
                    "config_path": a.path, "format": a.format, "install": a.install})
    return out


@dataclass
class Target:
    """What an agent is pointed at."""
    base_url: str  # the server root, e.g. http://127.0.0.1:6590
    api_key: str | None
    model: str
    context: int = 0  # the model's window, when known
    max_output: int = 4096


def config(name: str, t: Target, env_form: bool = False) -> tuple[dict | None, str]:
    """(the config as data, or None for an environment form; its text)."""
    if name not in AGENTS:
        raise KeyError(name)
    v1, key = t.base_url.rstrip("/") + "/v1", t.api_key or "none"
    limits = {"context": t.context, "output": t.max_output} if t.context else {"output": t.max_output}
    if name == "openclaw":
        model = {"id": t.model, "name": f"{t.model} (NovaMLX)", "maxTokens": t.max_output}
        if t.context:
            model["contextWindow"] = t.context
        data = {"models": {"mode": "merge", "providers": {PROVIDER: {
                    "baseUrl": v1, "apiKey": key, "api": "openai-completions", "models": [model]}}},
                "agents": {"defaults": {"model": {"primary": f"{PROVIDER}/{t.model}"}}}}
        return data, json.dumps(data, indent=2) + "\n"
    if name == "hermes":
        data = {"model": {"default": t.model, "provider": f"custom:{PROVIDER}"},
                "custom_providers": [{"name": PROVIDER, "base_url": v1, "api_key": key, "model": t.model}]}
        return data, _yaml(data)
    if name == "opencode":
        data = {"$schema": "https://opencode.ai/config.json",
                "provider": {PROVIDER: {"npm": "@ai-sdk/openai-compatible", "name": "NovaMLX",
                                        "options": {"baseURL": v1, "apiKey": key},
                                        "models": {t.model: {"name": f"{t.model} (NovaMLX)", "limit": limits}}}},
                "model": f"{PROVIDER}/{t.model}"}
        if env_form:
            return None, f"export OPENCODE_CONFIG_CONTENT={_shell(json.dumps(data))}\n"
        return data, json.dumps(data, indent=2) + "\n"
    if name == "claude-code":
        env = {"ANTHROPIC_BASE_URL": t.base_url.rstrip("/"), "ANTHROPIC_AUTH_TOKEN": key, "ANTHROPIC_MODEL": t.model,
               "ANTHROPIC_SMALL_FAST_MODEL": t.model,
               "CLAUDE_CODE_ATTRIBUTION_HEADER": "0"}  # a per-request token in the system prompt defeats the prefix cache
        if env_form:
            return None, "".join(f"export {k}={_shell(v)}\n" for k, v in env.items())
        data = {"env": env}
        return data, json.dumps(data, indent=2) + "\n"
    # codex: a Responses provider; the key comes from the environment variable it names
    lines = [f'model = {_toml(t.model)}', f'model_provider = "{PROVIDER}"']
    if t.context:
        lines.append(f"model_context_window = {t.context}")
    lines += ["", f"[model_providers.{PROVIDER}]", 'name = "NovaMLX"', f"base_url = {_toml(v1)}",
              'wire_api = "responses"', 'env_key = "NOVAMLX_API_KEY"']
    text = "\n".join(lines) + "\n"
    if env_form:
        return None, f"export NOVAMLX_API_KEY={_shell(key)}\n"
    import tomllib

    return tomllib.loads(text), text


def write(name: str, t: Target, home: Path | None = None) -> dict:
    """Write the agent's config file; the file it replaces is kept as <file>.bak-<time>. JSON
    configs are merged into the existing object (the user's other settings stay)."""
    agent = AGENTS[name]
    path = Path(agent.path.replace("~", str(home), 1) if home else agent.path).expanduser()
    data, text = config(name, t)
    backup = None
    if path.exists():
        backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, backup)
        if agent.format == "json":
            try:
                text = json.dumps(_merge(json.loads(path.read_text()), data), indent=2) + "\n"
            except ValueError:
                pass  # not JSON: replaced whole (the backup has it)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return {"path": str(path), "backup": str(backup) if backup else None}


def _merge(old, new):
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merge(old.get(k), v) for k, v in new.items()}}
    return new


def _shell(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _toml(s: str) -> str:
    return json.dumps(s)  # a TOML basic string is a JSON string for what we write


def _yaml(data, indent: int = 0) -> str:
    """The little YAML these configs need: maps, lists of maps, strings (JSON-quoted)."""
    pad, out = " " * indent, []
    for k, v in data.items():
        if isinstance(v, dict):
            out.append(f"{pad}{k}:\n{_yaml(v, indent + 2).rstrip(chr(10))}")
        elif isinstance(v, list):
            out.append(f"{pad}{k}:")
            for item in v:
                body = _yaml(item, indent + 4).splitlines()
                out.append(f"{pad}  - {body[0].strip()}")
                out += [line for line in body[1:]]
        else:
            out.append(f"{pad}{k}: {json.dumps(v)}")
    return "\n".join(out) + "\n"
