"""Test-only fault switch, off by default.

NOVAMLX_FAULT="crash_after_tokens:N" kills the worker (SIGKILL, like an OOM kill) once it
has generated N tokens; "hang_after_tokens:N" freezes the engine thread instead, so the
gateway's ping watchdog must notice. Either fires only in the first worker the gateway
starts (NOVAMLX_WORKER_GENERATION=0), so the replacement serves normally.
"crash_on_text:MARKER" is a poison request: the worker dies (SIGKILL) while admitting any
chat whose messages contain MARKER, in every worker, as a request that crashes MLX would.
"raise_on_text:MARKER" makes such a request raise in the engine at its first token instead:
the engine must fail that request alone and keep serving the others.
"""
from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger("novamlx.fault")


class FaultSwitch:
    def __init__(self, spec: str | None = None, generation: int | None = None):
        spec = os.environ.get("NOVAMLX_FAULT", "") if spec is None else spec
        generation = int(os.environ.get("NOVAMLX_WORKER_GENERATION", "0")) if generation is None else generation
        self.kind, self.after, self.marker = None, 0, None
        self.raising: set[str] = set()  # request ids that raise at their next token (raise_on_text)
        kind, _, arg = (spec or "").partition(":")
        if kind in ("crash_on_text", "raise_on_text"):
            self.kind, self.marker = kind, arg
        elif spec and generation == 0:
            if kind not in ("crash_after_tokens", "hang_after_tokens"):
                raise ValueError(f"unknown NOVAMLX_FAULT {spec!r}")
            self.kind, self.after = kind, int(arg or 0)

    def check_request(self, rid: str, messages) -> None:
        if not self.marker or not any(self.marker in (msg.content or "") for msg in messages or []):
            return
        log.warning("fault switch: %s for %s", self.kind, rid)
        if self.kind == "crash_on_text":
            os.kill(os.getpid(), signal.SIGKILL)
        self.raising.add(rid)

    def check_token(self, rid: str) -> None:
        if rid in self.raising:
            self.raising.discard(rid)
            raise RuntimeError("fault switch: raise_on_text")

    def check(self, tokens_generated: int) -> None:
        if self.kind not in ("crash_after_tokens", "hang_after_tokens") or tokens_generated < self.after:
            return
        log.warning("fault switch: %s after %d tokens", self.kind, tokens_generated)
        if self.kind == "crash_after_tokens":
            os.kill(os.getpid(), signal.SIGKILL)
        while True:  # hang_after_tokens
            time.sleep(3600)


def scripted_output(messages) -> str | None:
    """Test-only: with NOVAMLX_TEST_SCRIPTS=DIR set, a chat whose last user message is "SCRIPT:name"
    is answered with exactly the text of DIR/name.txt (then EOS), so tests can drive a tiny
    random model through tool calls and reasoning; after k tool results that follow it, with
    DIR/name.k.txt (a tool loop's next round). Off unless the variable is set."""
    folder = os.environ.get("NOVAMLX_TEST_SCRIPTS")
    if not folder or not messages:
        return None
    users = [i for i, msg in enumerate(messages) if msg.role == "user"]
    if not users:
        return None
    last = (messages[users[-1]].content or "").strip()
    after = messages[users[-1] + 1:]
    if not last.startswith("SCRIPT:") or any(msg.role not in ("assistant", "tool") for msg in after):
        return None
    rounds = sum(msg.role == "tool" for msg in after)
    if after and after[-1].role != "tool":
        return None  # a turn that ends in an assistant message is not a script's
    name = os.path.basename(last[len("SCRIPT:"):].strip()) + (f".{rounds}" if rounds else "")
    path = os.path.join(folder, f"{name}.txt")
    return open(path, encoding="utf-8").read() if os.path.exists(path) else None
