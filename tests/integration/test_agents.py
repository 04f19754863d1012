"""Coding-agent set-up: detection on PATH, each agent's config parsed back by its own format's
parser (json, yaml, toml) with this server's address, key and model, writing with a backup and
a merge of the user's JSON settings, and the same through the admin API."""
import json
import os
import subprocess
import sys
import tomllib

import httpx
import yaml

from tests.conftest import ROOT, Server

ADMIN = {"authorization": "Bearer adm"}
CLI = [sys.executable, "-c", "import sys; from novamlx_gateway.cli import main; main(sys.argv[1:])"]


def cli(*args, env=None) -> str:
    r = subprocess.run([*CLI, "agents", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_every_agent_config_parses_with_its_own_format():
    flags = ["--port", "7001", "--api-key", "sk-agents", "--model", "qwen3-8b", "--context", "32768"]
    claw = json.loads(cli("config", "openclaw", *flags))
    provider = claw["models"]["providers"]["novamlx"]
    assert provider["baseUrl"] == "http://127.0.0.1:7001/v1" and provider["apiKey"] == "sk-agents"
    assert provider["api"] == "openai-completions" and provider["models"][0]["contextWindow"] == 32768
    assert claw["agents"]["defaults"]["model"]["primary"] == "novamlx/qwen3-8b"

    hermes = yaml.safe_load(cli("config", "hermes", *flags))
    assert hermes["model"] == {"default": "qwen3-8b", "provider": "custom:novamlx"}
    assert hermes["custom_providers"][0]["base_url"] == "http://127.0.0.1:7001/v1"
    assert hermes["custom_providers"][0]["api_key"] == "sk-agents"

    code = json.loads(cli("config", "opencode", *flags))
    model = code["provider"]["novamlx"]["models"]["qwen3-8b"]
    assert model["limit"] == {"context": 32768, "output": 4096} and code["model"] == "novamlx/qwen3-8b"
    env = cli("config", "opencode", "--env", *flags)
    assert env.startswith("export OPENCODE_CONFIG_CONTENT=")

    claude = json.loads(cli("config", "claude-code", *flags))["env"]
    assert claude["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:7001" and claude["ANTHROPIC_AUTH_TOKEN"] == "sk-agents"
    assert claude["CLAUDE_CODE_ATTRIBUTION_HEADER"] == "0"

    codex = tomllib.loads(cli("config", "codex", *flags))
    assert codex["model_provider"] == "novamlx" and codex["model_context_window"] == 32768
    assert codex["model_providers"]["novamlx"] == {"name": "NovaMLX", "base_url": "http://127.0.0.1:7001/v1",
                                                   "wire_api": "responses", "env_key": "NOVAMLX_API_KEY"}


def test_detection_and_writing_with_a_backup(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "opencode"
    fake.write_text("#!/bin/sh\necho opencode\n")
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    listing = cli("list", env=env)
    assert f"opencode     {fake}" in listing and "claude-code" in listing

    cfg = tmp_path / ".config" / "opencode" / "opencode.json"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(json.dumps({"theme": "dark", "provider": {"other": {"name": "Other"}}}))
    out = json.loads(cli("config", "opencode", "--write", "--model", "m1", env=env))
    assert out["path"] == str(cfg) and out["backup"] and json.loads(open(out["backup"]).read())["theme"] == "dark"
    merged = json.loads(cfg.read_text())
    assert merged["theme"] == "dark" and set(merged["provider"]) == {"other", "novamlx"}  # the user's settings stay
    assert merged["model"] == "novamlx/m1"
    out = json.loads(cli("config", "codex", "--write", env=env))
    assert out["backup"] is None and tomllib.loads((tmp_path / ".codex" / "config.toml").read_text())["model"]


def test_admin_api_lists_agents_and_writes_their_config(tiny_model, tmp_path):
    home = tmp_path / "home"
    s = Server(["--model", str(tiny_model), "--admin-key", "adm", "--embedding-model", "none"], tmp_path / "data",
               env={"HOME": str(home)}).wait_ready()
    try:
        base = f"http://127.0.0.1:{s.admin_port}/admin/api/agents"
        names = [a["name"] for a in httpx.get(base, headers=ADMIN).json()["agents"]]
        assert names == ["openclaw", "hermes", "opencode", "claude-code", "codex"]
        r = httpx.get(base + "/codex/config", headers=ADMIN, params={"model": "tiny-llama"}).json()
        parsed = tomllib.loads(r["content"])
        assert parsed["model"] == "tiny-llama" and parsed["model_context_window"] == 512  # from the model itself
        assert parsed["model_providers"]["novamlx"]["base_url"] == f"http://127.0.0.1:{s.port}/v1"
        assert httpx.get(base + "/nope/config", headers=ADMIN).status_code == 404
        assert httpx.get(base + "/codex/config", headers=ADMIN, params={"model": "nope"}).status_code == 404
        w = httpx.post(base + "/hermes/config", headers=ADMIN, json={"model": "tiny-llama"}).json()
        assert w["path"] == str(home / ".hermes" / "config.yaml")
        assert yaml.safe_load((home / ".hermes" / "config.yaml").read_text())["model"]["default"] == "tiny-llama"
    finally:
        s.stop()
