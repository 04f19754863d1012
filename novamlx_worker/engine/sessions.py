"""Sessions: a conversation's KV state kept across turns under a client-chosen id.

A request naming a session starts from the session's state when its prompt extends the tokens
the state holds (the previous turns: prompt and answer), whatever the prefix cache has evicted
meanwhile, and leaves its own final state there for the next turn. States can be saved to
`<folder>/<id>.safetensors` (mlx-lm's prompt-cache format, every cache kind, with the token
ids, model id and a format version), restored (after a restart too), forked into an
independent copy, listed and deleted. At most `capacity` sessions (the oldest idle one goes
first when a new one comes) and each expires after `ttl` idle seconds.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlx_lm.models.cache import can_trim_prompt_cache, load_prompt_cache, save_prompt_cache, trim_prompt_cache

from protocol.naming import SESSION_ID

from .errors import RequestError
from .kv import held
from .snapshots import clone, nbytes

log = logging.getLogger("novamlx.sessions")

FORMAT = "1"


@dataclass
class Session:
    id: str
    model: str
    tokens: list[int]
    cache: list | None
    last_used: float = field(default_factory=time.monotonic)
    saved: bool = False
    nbytes: int = 0


class Sessions:
    def __init__(self, folder: str | None, capacity: int = 64, ttl: float = 1800.0):
        self.folder = Path(folder) if folder else None
        self.capacity, self.ttl = capacity, ttl
        self.items: dict[str, Session] = {}
        self.evicted = 0
        self.dropped = 0  # sessions let go under memory pressure (saved first when saving is on)

    @property
    def bytes(self) -> int:
        """KV bytes the kept states hold: admission counts them against the KV budget."""
        return sum(s.nbytes for s in self.items.values())

    @staticmethod
    def check_id(sid: str) -> str:
        if not isinstance(sid, str) or not SESSION_ID.fullmatch(sid):
            raise RequestError("A session id is 1-128 letters, digits, '.', '_' or '-'.", "invalid_value", "session")
        return sid

    # ---- turns ----
    def start(self, sid: str, model: str, tokens: list[int]) -> tuple[int, list | None]:
        """(tokens restored, a copy of the state) for the part of `tokens` this session holds:
        all of its tokens when `tokens` extends them; else, for caches that can be cut back
        (plain KV), the common prefix (a client re-renders the last answer a little differently)."""
        s = self.items.get(sid)
        if s is None and self.folder is not None and self._file(sid).exists():  # saved earlier (a restart)
            try:
                self.restore(sid, model)
            except RequestError as e:
                log.warning("session %s not restored: %s", sid, e)
            s = self.items.get(sid)
        if s is None or s.model != model or s.cache is None:
            return 0, None
        limit = min(len(s.tokens), len(tokens) - 1)  # at least one token is left to feed
        common = next((i for i in range(limit) if s.tokens[i] != tokens[i]), limit)
        cut = len(s.tokens) - common
        if common <= 0 or (cut and not can_trim_prompt_cache(s.cache)):
            return 0, None
        s.last_used = time.monotonic()
        state = clone(s.cache)
        if cut:
            trim_prompt_cache(state, cut)
        return common, state

    def end(self, sid: str, model: str, tokens: list[int], cache: list | None) -> None:
        """A turn ended: its state (covering tokens[:held]) is the session's now."""
        if not cache:
            return
        n = min(held(cache), len(tokens))
        if n <= 0:
            return
        if held(cache) > n:  # fed past its last kept token (a draft beyond a stop): cut back, or keep nothing
            if not can_trim_prompt_cache(cache):
                return
            trim_prompt_cache(cache, held(cache) - n)
        if sid not in self.items and len(self.items) >= self.capacity:
            oldest = min(self.items.values(), key=lambda s: s.last_used)
            log.info("session %s evicted: %d sessions is the most kept (oldest idle goes)", oldest.id, self.capacity)
            del self.items[oldest.id]
            self.evicted += 1
        self.items[sid] = Session(sid, model, list(tokens[:n]), cache, nbytes=nbytes(cache))

    def drop_one(self) -> bool:
        """Memory is short: the least recently used session leaves memory (saved first when saving
        is on, so a later turn restores it). Says whether there was one."""
        if not self.items:
            return False
        s = min(self.items.values(), key=lambda x: x.last_used)
        if self.folder is not None and not s.saved:
            try:
                self.save(s.id)
            except Exception as e:  # noqa: BLE001 - memory comes first; the state is lost, not the worker
                log.warning("session %s not saved before dropping it: %s", s.id, e)
        del self.items[s.id]
        self.dropped += 1
        log.warning("session %s dropped from memory (%s)", s.id, "saved" if s.saved else "not saved")
        return True

    def expire(self) -> None:
        now = time.monotonic()
        for sid in [s.id for s in self.items.values() if now - s.last_used > self.ttl]:
            log.info("session %s expired after %.0f s idle", sid, self.ttl)
            del self.items[sid]

    # ---- admin ----
    def command(self, cmd) -> dict:
        """A SessionOp command's answer."""
        ops = {"list": lambda: {"sessions": self.list(), "evicted": self.evicted, "dropped": self.dropped,
                                "bytes": self.bytes},
               "delete": lambda: self.delete(cmd.session), "save": lambda: self.save(cmd.session),
               "restore": lambda: self.restore(cmd.session, cmd.model),
               "fork": lambda: self.fork(cmd.session, cmd.new_session)}
        if cmd.op not in ops:
            raise RequestError(f"Unknown session operation {cmd.op!r}.", "invalid_value", "op")
        return ops[cmd.op]()

    def _get(self, sid: str) -> Session:
        s = self.items.get(self.check_id(sid))
        if s is None:
            raise RequestError(f"No session `{sid}`.", "model_not_found", "session")
        return s

    def _file(self, sid: str) -> Path:
        if self.folder is None:
            raise RequestError("Saving sessions is off (no data folder).", "invalid_request", "session")
        return self.folder / f"{self.check_id(sid)}.safetensors"

    def info(self, s: Session) -> dict:
        return {"id": s.id, "model": s.model, "tokens": len(s.tokens), "bytes": nbytes(s.cache or []),
                "idle_s": round(time.monotonic() - s.last_used, 1), "saved": s.saved}

    def list(self) -> list[dict]:
        return [self.info(s) for s in self.items.values()]

    def delete(self, sid: str) -> dict:
        self._get(sid)
        del self.items[sid]
        if self.folder is not None and self._file(sid).exists():
            self._file(sid).unlink()
        return {"id": sid, "deleted": True}

    def save(self, sid: str) -> dict:
        s = self._get(sid)
        path = self._file(sid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.safetensors")
        save_prompt_cache(str(tmp), s.cache, {"model": s.model, "tokens": json.dumps(s.tokens), "format": FORMAT})
        tmp.replace(path)
        s.saved = True
        return self.info(s)

    def restore(self, sid: str, model: str | None = None) -> dict:
        path = self._file(sid)
        if not path.exists():
            raise RequestError(f"No saved session `{sid}`.", "model_not_found", "session")
        cache, meta = load_prompt_cache(str(path), return_metadata=True)
        if meta.get("format") != FORMAT:
            raise RequestError(f"Session `{sid}` was saved in format {meta.get('format')!r}; this server reads "
                               f"{FORMAT!r}.", "invalid_request", "session")
        if model is not None and meta.get("model") != model:
            raise RequestError(f"Session `{sid}` belongs to model `{meta.get('model')}`, not `{model}`.",
                               "invalid_request", "session")
        self.end(sid, meta["model"], json.loads(meta["tokens"]), cache)
        self.items[sid].saved = True
        return self.info(self.items[sid])

    def fork(self, sid: str, new_id: str) -> dict:
        s = self._get(sid)
        if self.check_id(new_id) in self.items:
            raise RequestError(f"Session `{new_id}` exists already.", "invalid_request", "session")
        self.end(new_id, s.model, list(s.tokens), clone(s.cache))
        return self.info(self.items[new_id])
