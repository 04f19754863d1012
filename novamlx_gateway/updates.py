"""Is a newer release out? One GET to the releases API at most once a day (the answer is kept in
<data_dir>/update_check.json across restarts), in the background: start-up never waits for it,
and an offline machine only records the error. Shown in /health, the dashboard and the tray.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
from packaging.version import InvalidVersion, Version

from . import __version__

log = logging.getLogger("novamlx.updates")
DAY = 86400.0


def version_key(tag: str) -> Version:
    """'v1.10.0' > '1.9.2'; a pre-release sorts before its release (PEP 440, as pip compares);
    a tag that is no version sorts first."""
    try:
        return Version(tag.strip())
    except InvalidVersion:
        return Version("0")


class UpdateCheck:
    def __init__(self, url: str, cache: Path, enabled: bool, current: str = __version__, every: float = DAY):
        self.url, self.cache, self.enabled, self.current, self.every = url, Path(cache), enabled, current, every
        self.result: dict = self._load()

    def _load(self) -> dict:
        try:
            return json.loads(self.cache.read_text())
        except (OSError, ValueError):
            return {}

    def state(self) -> dict:
        if not self.enabled:
            return {"enabled": False, "current": self.current}
        r = self.result
        latest = r.get("latest")
        available = bool(latest) and version_key(latest) > version_key(self.current)
        return {"enabled": True, "current": self.current, "latest": latest, "available": available,
                "url": r.get("url"), "checked_at": r.get("checked_at"), "error": r.get("error")}

    def due(self) -> bool:
        return time.time() - self.result.get("checked_at", 0) >= self.every

    async def check(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=10, follow_redirects=True) as client:
                r = await client.get(self.url, headers={"accept": "application/vnd.github+json",
                                                        "user-agent": f"novamlx/{self.current}"})
            r.raise_for_status()
            body = r.json()
            tag = body.get("tag_name") if isinstance(body, dict) else None
            if not isinstance(tag, str) or not tag:
                raise ValueError("the answer has no tag_name")
            self.result = {"latest": tag.lstrip("v"), "url": body.get("html_url"), "checked_at": time.time()}
        except (httpx.HTTPError, ValueError) as e:  # offline or a bad answer: noted, tried again tomorrow
            self.result = {**self.result, "checked_at": time.time(), "error": f"{type(e).__name__}: {e}"[:300]}
            log.info("update check failed: %s", self.result["error"])
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            self.cache.write_text(json.dumps(self.result))
        except OSError:
            pass

    async def run(self) -> None:
        """The background task: check when due, then sleep until the next one is."""
        if not self.enabled:
            return
        while True:
            if self.due():
                await self.check()
            await asyncio.sleep(max(self.every - (time.time() - self.result.get("checked_at", 0)), 60.0))
