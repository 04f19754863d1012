"""Stored Responses API objects: one JSON file each under <data_dir>/responses/, written
atomically, so they survive restarts. A record holds the response and the conversation
(every input and output item so far) that previous_response_id continues from."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

_ID = re.compile(r"^resp_[A-Za-z0-9]{8,64}$")


class ResponseStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, rid: str) -> Path | None:
        return self.root / f"{rid}.json" if _ID.match(rid) else None  # ids never reach the file system raw

    def save(self, rid: str, record: dict) -> None:
        path = self._path(rid)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def get(self, rid: str) -> dict | None:
        path = self._path(rid)
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def delete(self, rid: str) -> bool:
        path = self._path(rid)
        if path is None or not path.exists():
            return False
        path.unlink()
        return True
