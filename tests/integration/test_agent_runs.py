"""Real coding agents (Codex and OpenCode from npm) run against the server with the configs
`novamlx-gateway agents config NAME --write` generates. The tiny random model cannot do their
tasks: what is checked is the wire (their requests reach our routes and are answered 200).
npm installs them once into ~/.cache/novamlx-test-agents (skipped on a machine without npm)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Server
from tests.fixtures.tiny_models import TINY_LLAMA, build_tiny_llama

NPM = shutil.which("npm")
pytestmark = pytest.mark.skipif(NPM is None, reason="npm is not installed")
CLI = [sys.executable, "-c", "import sys; from novamlx_gateway.cli import main; main(sys.argv[1:])"]


@pytest.fixture(scope="module")
def agent_bin():
    cache = Path.home() / ".cache" / "novamlx-test-agents"
    bin_dir = cache / "node_modules" / ".bin"
    if not ((bin_dir / "codex").exists() and (bin_dir / "opencode").exists()):
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([NPM, "install", "--silent", "--prefix", str(cache), "@openai/codex", "opencode-ai"],
                           timeout=600, capture_output=True, text=True)
        if r.returncode != 0:  # no registry reachable: nothing to run, which is not the server's failure
            pytest.skip(f"npm could not install the agents: {r.stderr.strip()[-300:]}")
    return bin_dir


def answered(s, route: str) -> float:
    text = httpx.get(s.base_url + "/metrics", headers=s.headers).text
    return sum(sm.value for fam in text_string_to_metric_families(text) for sm in fam.samples
               if sm.name == "novamlx_http_requests_total" and sm.labels.get("route") == route
               and sm.labels.get("status") == "200")


def test_codex_and_opencode_run_with_generated_configs(agent_bin, tmp_path):
    model = build_tiny_llama(tmp_path / "tiny-agent", seed=2, cfg={**TINY_LLAMA, "max_position_embeddings": 65536})
    s = Server(["--model", str(model), "--embedding-model", "none", "--default-max-tokens", "8"], tmp_path / "data",
               keys=("sk-agent",)).wait_ready()
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HOME": str(home), "NOVAMLX_API_KEY": "sk-agent", "NO_COLOR": "1"}
    try:
        for name in ("codex", "opencode"):
            r = subprocess.run([*CLI, "agents", "config", name, "--write", "--port", str(s.port), "--api-key",
                                "sk-agent", "--model", "tiny-agent", "--context", "65536"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
        subprocess.run([str(agent_bin / "codex"), "exec", "--skip-git-repo-check", "Say hi"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
        assert answered(s, "/v1/responses") >= 1  # Codex spoke Responses to us, as its generated config says
        r = subprocess.run([str(agent_bin / "opencode"), "run", "Say hi"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert answered(s, "/v1/chat/completions") >= 1  # OpenCode through chat completions
    finally:
        s.stop()
