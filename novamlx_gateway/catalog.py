"""The gateway's view of models on disk: discovery, registration with the worker, per-model
policies, deletion and hub downloads. The worker owns what is loaded; this owns what exists."""
from __future__ import annotations

import asyncio
import logging
import uuid

from protocol import messages as m

from .config import Config
from .errors import APIError
from .hub import download as dl
from .hub.registry import Found, deletable_root, delete, discover

log = logging.getLogger("novamlx.catalog")


def _rid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Catalog:
    def __init__(self, cfg: Config, worker, settings):
        self.cfg, self.worker, self.settings = cfg, worker, settings
        self.found: dict[str, Found] = {}
        self.downloads: dict[str, dl.DownloadTask] = {}
        worker.boot_commands = self.boot_commands

    # ---- discovery and registration ----
    def scan(self) -> list[Found]:
        found = discover(self.cfg.data_path, self.cfg.discover_hf_cache)
        self.found = {f.id: f for f in found}
        return found

    def _register_cmd(self, found: list[Found]) -> m.Register:
        return m.Register(_rid("register"), [m.Found(f.path, f.kind) for f in found])

    def policies_cmd(self) -> m.Policies:
        pol = {mid: m.Policy(int(s.get("ttl_seconds") or 0), bool(s.get("is_pinned")), int(s.get("max_context_window") or 0),
                             s.get("kv_bits"), int(s.get("kv_group_size") or 64), s.get("draft_model"),
                             int(s.get("num_draft_tokens") or 0))
               for mid, s in self.settings.data.items()}
        return m.Policies(_rid("policies"), pol)

    def boot_commands(self) -> list:
        """Sent to every new worker before any request: what exists on disk, per-model policies."""
        return [self._register_cmd(list(self.found.values())), self.policies_cmd()]

    async def rescan(self) -> dict:
        before = {i.id for i in self.worker.models}
        found = await asyncio.to_thread(self.scan)
        await self.worker.call(self._register_cmd(found))
        after = {i.id for i in self.worker.models}
        return {"found": [f.__dict__ for f in found], "added": sorted(after - before)}

    async def push_policies(self) -> None:
        await self.worker.call(self.policies_cmd())

    # ---- deletion ----
    async def delete(self, name: str) -> dict:
        info = self.worker.resolve_model(name)
        if info is None:
            raise APIError(404, f"No model '{name}'.", "model_not_found", "id")
        root = deletable_root(info.path, self.cfg.data_path) if info.path else None
        if root is None or not root.exists():
            raise APIError(400, f"'{info.id}' is not in the data dir or the Hugging Face cache ({info.path}); "
                                "NovaMLX only deletes files it manages. Remove it from the configured models instead.",
                           "not_deletable", "id")
        await self.worker.call(m.Forget(_rid("forget"), info.id))
        freed = await asyncio.to_thread(delete, root)
        self.found.pop(info.id, None)
        return {"id": info.id, "object": "model", "deleted": True, "path": str(root), "freed_bytes": freed}

    # ---- downloads ----
    def start_download(self, repo_id: str, revision: str, allow: list[str] | None) -> dl.DownloadTask:
        try:
            dl.destination(self.cfg.data_path, repo_id)
        except dl.DownloadError as e:
            raise APIError(400, str(e), "invalid_value", "repo_id") from None
        for t in self.downloads.values():
            if t.repo_id == repo_id and t.status in ("queued", "downloading"):
                return t  # one download per repo at a time
        task = dl.DownloadTask(repo_id, revision, allow)
        self.downloads[task.id] = task
        asyncio.get_running_loop().create_task(self._download(task))
        return task

    async def _download(self, task: dl.DownloadTask) -> None:
        try:
            path = await asyncio.to_thread(dl.run, task, self.cfg.data_path, self.cfg.hf_endpoint or None)
        except dl.Cancelled:
            log.info("download %s of %s cancelled", task.id, task.repo_id)
            return
        except Exception as e:  # noqa: BLE001 - recorded on the task, which the client polls
            if task.status != "failed":
                task.status, task.error = "failed", str(e)
            log.warning("download %s of %s failed: %s", task.id, task.repo_id, task.error)
            return
        log.info("downloaded %s to %s", task.repo_id, path)
        try:
            await self.rescan()  # registered automatically: servable right away
        except APIError as e:
            log.warning("registering %s failed: %s", task.repo_id, e.message)

    def task(self, task_id: str) -> dl.DownloadTask:
        task = self.downloads.get(task_id)
        if task is None:
            raise APIError(404, f"No download task '{task_id}'.", "not_found", "task_id")
        return task

    def cancel(self, task_id: str) -> dl.DownloadTask:
        task = self.task(task_id)
        if task.status in ("queued", "downloading"):
            task.cancel_event.set()
            task.status = "cancelled"
        return task

