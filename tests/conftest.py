"""Shared fixtures: tiny models built once per session, real gateway + worker processes."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from novamlx_worker.platform import preload_openblas  # noqa: E402

preload_openblas()  # before MLX loads, as the worker does: in-process model tests run ~40x faster on CPU

from tests.fixtures.tiny_models import build_tiny_llama  # noqa: E402

API_KEY = "sk-test-key"
SCRIPTS = ROOT / "tests" / "fixtures" / "scripts"  # test-only forced outputs (novamlx_worker.faults)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `novamlx-gateway` process (which spawns its real worker) on free ports."""

    def __init__(self, args: list[str], data_dir: Path, env: dict | None = None, keys=(API_KEY,)):
        self.port = free_port()
        self.admin_port = free_port()
        self.keys = list(keys)
        self.data_dir = data_dir
        cmd = [sys.executable, "-m", "novamlx_gateway", "--port", str(self.port), "--admin-port", str(self.admin_port),
               "--data-dir", str(data_dir), *args]
        for k in self.keys:
            cmd += ["--api-key", k]
        self.log_path = data_dir / "gateway.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "HF_HUB_CACHE": str(data_dir / "hf-cache"), **(env or {})},
                                     start_new_session=True)
        self.base_url = f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict:
        return {"authorization": f"Bearer {self.keys[0]}"} if self.keys else {}

    def wait_ready(self, timeout: float = 180) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"gateway not ready:\n{self.log_path.read_text()[-4000:]}")

    def health(self) -> dict:
        return httpx.get(self.base_url + "/health", timeout=5).json()

    def stats(self) -> dict:
        return httpx.get(self.base_url + "/v1/stats", headers=self.headers, timeout=10).json()

    def openai(self, strict: bool = True, **kw):
        """The official SDK; strict validation unless the check is of a wire where OpenAI's own
        bytes and the SDK's strict types disagree (OpenAI's wire wins there)."""
        from openai import OpenAI

        return OpenAI(base_url=self.base_url + "/v1", api_key=self.keys[0] if self.keys else "none",
                      max_retries=0, _strict_response_validation=strict, timeout=kw.pop("timeout", 120), **kw)

    def async_openai(self, **kw):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url + "/v1", api_key=self.keys[0] if self.keys else "none",
                           max_retries=0, _strict_response_validation=True, timeout=kw.pop("timeout", 120), **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_long(tmp_path_factory) -> Path:
    """A tiny model with a 4096-token window, for generations long enough to interrupt."""
    from tests.fixtures.tiny_models import TINY_LLAMA

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-long", seed=1,
                            cfg={**TINY_LLAMA, "max_position_embeddings": 4096})


@pytest.fixture(scope="session")
def server(tiny_model, tmp_path_factory):
    """The shared server on the tiny model, with an API key."""
    s = Server(["--model", str(tiny_model), "--health-interval", "0.5"], tmp_path_factory.mktemp("data"),
               env={"NOVAMLX_TEST_SCRIPTS": str(SCRIPTS)}).wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def default_server(tmp_path_factory):
    """A server on the embedded default model (SmolLM2-135M GGUF), no API key."""
    s = Server([], tmp_path_factory.mktemp("data-default"), keys=()).wait_ready()
    yield s
    s.stop()


@pytest.fixture
def client(server):
    return server.openai()
