"""The SSD tier of the prefix cache: evicted blocks as safetensors files.

Layout: <root>/<0-f>/<hash>.safetensors (16 buckets by the hash's first hex digit). Files
are written by a background thread from numpy copies made on the engine thread, so MLX
never leaves its thread. A size cap (never more than free disk minus a margin) is kept by
deleting least recently used files. A corrupt or truncated file is deleted and skipped.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

log = logging.getLogger("novamlx.ssd")

FREE_DISK_MARGIN = 2 * 1024**3


class SSDTier:
    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.index: OrderedDict[str, int] = OrderedDict()  # hash -> file size, LRU order
        self.pending: dict[str, tuple[dict, dict]] = {}  # written soon; readable meanwhile
        self.lock = threading.Lock()
        self.reads = self.writes = self.corrupt = 0
        for b in range(16):
            (self.root / f"{b:x}").mkdir(parents=True, exist_ok=True)
        files = sorted(self.root.glob("*/*.safetensors"), key=lambda p: p.stat().st_mtime)
        for p in files:
            self.index[p.stem] = p.stat().st_size
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._writer, name="ssd-writer", daemon=True).start()

    def path(self, h: str) -> Path:
        return self.root / h[0] / f"{h}.safetensors"

    @property
    def bytes(self) -> int:
        return sum(self.index.values())

    def __contains__(self, h: str) -> bool:
        return h in self.index or h in self.pending

    def put(self, h: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
        with self.lock:
            if h in self.index or h in self.pending:
                return
            self.pending[h] = (arrays, meta)
        self.queue.put(h)

    def get(self, h: str) -> tuple[dict[str, np.ndarray], dict] | None:
        with self.lock:
            if h in self.pending:
                return self.pending[h]
            if h not in self.index:
                return None
            self.index.move_to_end(h)
        p = self.path(h)
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="numpy") as f:
                meta = dict(f.metadata() or {})
                arrays = {k: f.get_tensor(k) for k in f.keys()}
            meta["tokens"] = json.loads(meta["tokens"])
            os.utime(p)
            self.reads += 1
            return arrays, meta
        except Exception as e:  # noqa: BLE001 - any unreadable file is dropped, never fatal
            log.warning("dropping unreadable cache file %s: %s", p.name, e)
            self.corrupt += 1
            self._delete(h)
            return None

    def _delete(self, h: str) -> None:
        with self.lock:
            self.index.pop(h, None)
        try:
            self.path(h).unlink()
        except FileNotFoundError:
            pass

    def _cap(self) -> int:
        free = shutil.disk_usage(self.root).free
        return max(0, min(self.max_bytes, self.bytes + free - FREE_DISK_MARGIN))

    def _writer(self) -> None:
        from safetensors.numpy import save_file

        while True:
            h = self.queue.get()
            with self.lock:
                item = self.pending.get(h)
            if item is None:
                continue
            arrays, meta = item
            p = self.path(h)
            tmp = p.with_suffix(".tmp")
            try:
                save_file(arrays, str(tmp), metadata={**{k: str(v) for k, v in meta.items()},
                                                      "tokens": json.dumps(list(meta["tokens"]))})
                os.replace(tmp, p)
                with self.lock:
                    self.index[h] = p.stat().st_size
                    self.pending.pop(h, None)
                self.writes += 1
                cap = self._cap()
                while self.bytes > cap and self.index:
                    oldest = next(iter(self.index))
                    self._delete(oldest)
            except OSError as e:
                log.warning("cannot write cache block %s: %s", h, e)
                with self.lock:
                    self.pending.pop(h, None)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until queued writes are on disk (graceful shutdown, tests)."""
        import time

        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)
