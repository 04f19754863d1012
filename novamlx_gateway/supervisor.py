"""The worker process: spawn it, read its lines, restart it when it dies, kill it when it hangs.

The supervisor knows processes, not requests: it hands every event to `on_event` and every
exit to `on_exit` (the WorkerClient routes and fails requests). It answers pings itself (the
watchdog) and appends each health push to the health log operators tail.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import msgspec

from protocol import codec
from protocol import messages as m

from .config import Config

log = logging.getLogger("novamlx.supervisor")


@dataclass
class WorkerState:
    pid: int | None = None
    ready: bool = False  # hello received and boot commands answered: requests may be sent
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = field(default_factory=time.time)


def _free_port_run(n: int) -> int:
    """A first port with the next n-1 free too (the ring backend listens on consecutive ports)."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        try:
            held = []
            for p in range(base, base + n):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no run of free ports for the ring backend")


class Supervisor:
    def __init__(self, cfg: Config, on_event: Callable[[object], None], on_exit: Callable[[int | None], None],
                 extra_env: dict | None = None):
        self.cfg = cfg
        self.on_event, self.on_exit = on_event, on_exit
        self.extra_env = extra_env or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.state = WorkerState()
        self.stopping = False
        self.health_log = cfg.data_path / "logs" / "worker-health.jsonl"
        self._pongs: dict[int, asyncio.Future] = {}
        self._tasks: list[asyncio.Task] = []
        self._first_start: asyncio.Future | None = None
        self._channel = None  # (reader, transport, fd, path) of the FIFO from a sharded group's rank 0
        self.annotate: Callable[[], dict] = lambda: {}  # the gateway's own counters, added to each log record

    def argv(self) -> list[str]:
        a = [sys.executable, "-m", "novamlx_worker", "--dequantize", self.cfg.dequantize, "--gguf-bits", self.cfg.gguf_bits,
             "--max-batch", str(self.cfg.max_batch), "--prefill-step", str(self.cfg.prefill_step),
             "--prefill-batch", str(self.cfg.prefill_batch),
             "--health-interval", str(self.cfg.health_interval),
             "--max-process-memory", self.cfg.max_process_memory,
             "--default-max-tokens", str(self.cfg.default_max_tokens), "--kv-budget-mb", str(self.cfg.kv_budget_mb),
             "--tool-parser", self.cfg.tool_parser]
        a += ["--block-size", str(self.cfg.block_size), "--prefix-cache-mb", str(self.cfg.prefix_cache_mb),
              "--ssd-cache-gb", str(self.cfg.ssd_cache_gb), "--kv-bits", str(self.cfg.kv_bits),
              "--kv-group-size", str(self.cfg.kv_group_size), "--ngram-draft", str(self.cfg.speculative_ngram),
              "--ngram-match", str(self.cfg.speculative_ngram_min_match), str(self.cfg.speculative_ngram_max_match),
              "--draft-model", self.cfg.draft_model, "--num-draft-tokens", str(self.cfg.num_draft_tokens),
              "--sessions-dir", str(self.cfg.data_path / "sessions"), "--max-sessions", str(self.cfg.max_sessions),
              "--session-ttl", str(self.cfg.session_ttl)]
        if self.cfg.ssd_cache:
            a += ["--ssd-cache-dir", str(self.cfg.data_path / "cache" / "kv"),
                  "--vision-cache-dir", str(self.cfg.data_path / "cache" / "vision")]
        for spec in self.cfg.models:
            a += ["--model", spec]
        for spec in self.cfg.embedding_models:
            a += ["--embedding-model", spec]
        for pattern in self.cfg.turn_stop_patterns:
            a += ["--turn-stop", pattern]
        for pin in self.cfg.pinned_models:
            a += ["--pin", pin]
        return self._launcher() + a + ["--distributed-backend", self.cfg.distributed_backend] \
            if self.cfg.distributed_backend else a

    def _launcher(self) -> list[str]:
        """mlx.launch starts the ranks (locally or over ssh from a hosts file), copies our stdin to
        each and relays their stdout: only rank 0 writes there, so it is the protocol channel."""
        c = self.cfg
        launch = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()",
                  "--backend", c.distributed_backend, "--cwd", str(Path(__file__).resolve().parent.parent)]
        launch += ["--hostfile", c.distributed_hostfile] if c.distributed_hostfile else ["-n", str(c.distributed_ranks)]
        if c.distributed_backend == "ring":
            launch += ["--starting-port", str(c.distributed_port or _free_port_run(c.distributed_ranks))]
        return launch + ["--"]

    async def start(self) -> None:
        """Spawn the worker and wait until it is ready (hello, then the client's boot commands)."""
        self._first_start = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._supervise()))
        self._tasks.append(asyncio.create_task(self._watchdog()))
        await asyncio.wait_for(asyncio.shield(self._first_start), self.cfg.worker_start_timeout)

    def mark_ready(self) -> None:
        self.state.ready = True
        if self._first_start and not self._first_start.done():
            self._first_start.set_result(True)

    async def _spawn(self) -> None:
        env = {**os.environ, **self.extra_env, "NOVAMLX_WORKER_GENERATION": str(self.state.restarts)}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
        self._close_channel()
        if self.cfg.distributed_backend and not self.cfg.distributed_hostfile:
            env["NOVAMLX_PROTOCOL_FIFO"] = await self._open_channel()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None,
            env=env, limit=codec.LINE_LIMIT, start_new_session=False)
        self.state.pid = self.proc.pid
        log.info("worker started pid=%s", self.proc.pid)

    async def _open_channel(self) -> str:
        """Sharded over local ranks: rank 0 writes the protocol into a FIFO we read directly,
        not through mlx.launch's stdout relay (which forwards in 100 ms polls)."""
        folder = self.cfg.data_path / "run"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"protocol-{os.getpid()}.fifo"
        path.unlink(missing_ok=True)
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # no EOF before rank 0 opens it
        reader = asyncio.StreamReader(limit=codec.LINE_LIMIT)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
        self._channel = (reader, transport, keep, path)
        return str(path)

    def _close_channel(self) -> None:
        if self._channel is not None:
            _, transport, keep, path = self._channel
            transport.close()
            os.close(keep)
            path.unlink(missing_ok=True)
            self._channel = None

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self.stopping:
            await self._spawn()
            started = time.monotonic()
            reader = asyncio.create_task(self._read(self.proc))
            code = await self.proc.wait()
            await asyncio.wait([reader], timeout=2)
            reader.cancel()  # a FIFO channel never reaches EOF on its own
            self.state.ready = False
            self.state.last_exit = code
            if self.stopping:
                break
            self.on_exit(code)
            if self._first_start and not self._first_start.done():
                self._first_start.set_exception(RuntimeError(f"worker exited with code {code} before it was ready"))
                return
            self.state.restarts += 1
            if time.monotonic() - started > 60:
                backoff = 0.5
            log.error("worker exited with code %s; restart #%d in %.1fs", code, self.state.restarts, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _read(self, proc) -> None:
        stream = self._channel[0] if self._channel is not None else proc.stdout
        assert stream is not None
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError) as e:
                log.error("worker line too long: %s", e)
                continue
            if not line:
                return
            try:
                event = codec.decode_event(line)
            except msgspec.DecodeError as e:
                log.error("bad line from worker: %s: %r", e, line[:200])
                rid = codec.line_id(line)
                if rid:  # its request gets an error instead of waiting for an answer that never comes
                    self.on_event(m.Error(rid, "The model worker sent an answer that could not be read "
                                               f"({e}).", "internal_error"))
                continue
            if isinstance(event, m.Pong):
                fut = self._pongs.pop(event.nonce, None)
                if fut and not fut.done():
                    fut.set_result(True)
                continue
            if isinstance(event, m.Health):
                self._append_health(event)
            self.on_event(event)

    def _append_health(self, ev: m.Health) -> None:
        try:
            self.health_log.parent.mkdir(parents=True, exist_ok=True)
            if self.health_log.exists() and self.health_log.stat().st_size > self.cfg.health_log_max_mb * 1e6:
                self.health_log.replace(self.health_log.with_suffix(".jsonl.1"))
            record = msgspec.to_builtins(ev)
            record["restarts"] = self.state.restarts
            record.update(self.annotate())
            with open(self.health_log, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as e:
            log.warning("cannot write health log: %s", e)

    async def _watchdog(self) -> None:
        """A worker that stops answering pings is hung: kill it, the supervisor restarts it."""
        nonce = 0
        interval = max(self.cfg.ping_timeout / 3, 0.5)
        while not self.stopping:
            await asyncio.sleep(interval)
            if not self.state.ready or self.proc is None:
                continue
            nonce += 1
            fut = asyncio.get_running_loop().create_future()
            self._pongs[nonce] = fut
            self.send(m.Ping(nonce))
            try:
                await asyncio.wait_for(fut, self.cfg.ping_timeout)
            except asyncio.TimeoutError:
                self._pongs.pop(nonce, None)
                if self.state.ready and self.proc and self.proc.returncode is None:
                    log.error("worker pid=%s did not answer a ping in %.0fs; killing it", self.proc.pid, self.cfg.ping_timeout)
                    self.proc.kill()

    async def stop(self, grace: float = 10.0) -> None:
        self.stopping = True
        for t in self._tasks:
            t.cancel()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self.send(m.Shutdown())
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        self._close_channel()

    def send(self, cmd) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.returncode is not None or proc.stdin.is_closing():
            return
        try:
            proc.stdin.write(codec.encode(cmd))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the supervisor sees the exit and re-sends what had not started
