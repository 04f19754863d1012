"""Start the servers a comparison runs against, each in its own process on a free port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Launched:
    name: str
    proc: subprocess.Popen
    base_url: str
    model: str
    log: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _launch(name: str, cmd: list[str], port: int, model_name: str, env: dict | None = None,
            timeout: float = 900) -> Launched:
    log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early; log: {log.name}\n" + open(log.name).read()[-3000:])
        try:
            r = httpx.get(base + "/v1/models", timeout=2)
            if r.status_code == 200:
                return Launched(name, proc, base, model_name, log.name)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"{name} did not start; log: {log.name}")


def start_novamlx(model: str | None, extra: list[str] = ()) -> Launched:
    port = free_port()
    data = tempfile.mkdtemp(prefix="bench-novamlx-")
    cmd = [sys.executable, "-m", "novamlx_gateway", "--port", str(port), "--admin-port", str(free_port()),
           "--data-dir", data, "--ssd-cache", "off", *extra]
    if model:
        cmd += ["--model", model]
    launched = _launch("novamlx", cmd, port, "")
    launched.model = httpx.get(launched.base_url + "/v1/models").json()["data"][0]["id"]
    return launched


def start_mlx_lm(model_dir: str, extra: list[str] = ()) -> Launched:
    port = free_port()
    cmd = [sys.executable, "-m", "mlx_lm.server", "--model", model_dir, "--port", str(port), *extra]
    return _launch("mlx_lm.server", cmd, port, model_dir, env={"NOVAMLX_OPENBLAS": "0"})


def start_mlx_vlm(model_dir: str, extra: list[str] = ()) -> Launched | None:
    try:
        import importlib.util

        if importlib.util.find_spec("mlx_vlm") is None:
            return None
    except ImportError:
        return None
    port = free_port()
    cmd = [sys.executable, "-m", "mlx_vlm.server", "--model", model_dir, "--port", str(port), *extra]
    return _launch("mlx_vlm.server", cmd, port, model_dir)


def raw_baseline(mode: str, model: str | None, **kw) -> dict:
    import json

    cmd = [sys.executable, "-m", "novamlx_worker.bench_raw", mode]
    if model:
        cmd += ["--model", model]
    for k, v in kw.items():
        if v is True:
            cmd.append(f"--{k.replace('_', '-')}")
        elif v is not None and v is not False:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"bench_raw {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
