"""Hub downloads: file by file into <data_dir>/models/<org>/<name>, resumable, cancellable.

huggingface_hub gives us the file list (with sizes and LFS sha256), the URLs and the auth
headers; the bytes are fetched here because since huggingface_hub 2.x a partial download is
thrown away, and a user pulling 40 GB over a flaky link needs to resume. Each file grows in
`<file>.part`; a new attempt asks for the rest with a Range header, the finished file is
checked against its size and sha256 and renamed into place. Cancelling keeps the .part files.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from protocol.naming import SOURCE_FILE

from .registry import models_dir

CHUNK = 1 << 20
# Weights in formats MLX does not load; skipped when the repo also has safetensors or GGUF.
FOREIGN_WEIGHTS = ["*.bin", "*.pth", "*.pt", "*.ckpt", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.ot",
                   "*.tflite", "*.mlmodel", "*.gguf"]


class Cancelled(Exception):
    pass


class DownloadError(Exception):
    pass


@dataclass
class FileTask:
    name: str
    size: int
    sha256: str | None = None
    done: int = 0


@dataclass
class DownloadTask:
    repo_id: str
    revision: str = "main"
    allow_patterns: list[str] | None = None
    id: str = field(default_factory=lambda: "dl-" + uuid.uuid4().hex[:12])
    status: str = "queued"  # queued | downloading | completed | failed | cancelled
    files: list[FileTask] = field(default_factory=list)
    error: str | None = None
    path: str | None = None
    commit: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    resumed_bytes: int = 0
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def done(self) -> int:
        return sum(f.done for f in self.files)

    def to_dict(self) -> dict:
        total = self.total
        return {"id": self.id, "object": "model.download", "repo_id": self.repo_id, "revision": self.revision,
                "status": self.status, "error": self.error, "path": self.path, "commit": self.commit,
                "downloaded_bytes": self.done, "total_bytes": total, "resumed_bytes": self.resumed_bytes,
                "progress": round(self.done / total, 4) if total else (1.0 if self.status == "completed" else 0.0),
                "files": [{"name": f.name, "size": f.size, "downloaded": f.done} for f in self.files],
                "created": int(self.created), "finished": int(self.finished) if self.finished else None}


def destination(data_dir: Path, repo_id: str) -> Path:
    if repo_id.count("/") != 1 or any(p in ("", ".", "..") for p in repo_id.split("/")):
        raise DownloadError(f"'{repo_id}' is not a hub repo id (owner/name).")
    return models_dir(data_dir) / repo_id


def _select(names: list[str], allow: list[str] | None) -> list[str]:
    if allow:
        return [n for n in names if any(fnmatch.fnmatch(n, p) for p in allow)]
    has_mlx_weights = any(n.endswith(".safetensors") for n in names)
    return [n for n in names if not (has_mlx_weights and any(fnmatch.fnmatch(n, p) for p in FOREIGN_WEIGHTS))]


def plan(task: DownloadTask, endpoint: str | None = None) -> None:
    """Fill in the file list and the commit from the hub."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(endpoint=endpoint).model_info(task.repo_id, revision=task.revision, files_metadata=True)
    except RepositoryNotFoundError:
        raise DownloadError(f"No model '{task.repo_id}' on the hub (or it is private and no token is set).") from None
    except RevisionNotFoundError:
        raise DownloadError(f"No revision '{task.revision}' of '{task.repo_id}'.") from None
    except (HfHubHTTPError, httpx.HTTPError, OSError) as e:
        if getattr(getattr(e, "response", None), "status_code", None) == 404:
            raise DownloadError(f"No model '{task.repo_id}' on the hub.") from None
        raise DownloadError(f"The hub could not be reached: {e}") from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    names = _select(sorted(siblings), task.allow_patterns)
    if not names:
        raise DownloadError(f"'{task.repo_id}' has no files to download" +
                            (f" matching {task.allow_patterns}." if task.allow_patterns else "."))
    task.commit = info.sha
    task.files = [FileTask(n, siblings[n].size or 0, siblings[n].lfs.sha256 if siblings[n].lfs else None)
                  for n in names]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK * 8):
            h.update(chunk)
    return h.hexdigest()


def fetch_file(client: httpx.Client, url: str, headers: dict, final: Path, f: FileTask, task: DownloadTask) -> None:
    if final.exists() and (not f.size or final.stat().st_size == f.size):
        f.done = final.stat().st_size
        return
    part = final.with_name(final.name + ".part")
    final.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if f.size and have > f.size:
        have = 0
    req = dict(headers, **({"Range": f"bytes={have}-"} if have else {}))
    with client.stream("GET", url, headers=req) as r:
        if r.status_code == 416 and have == f.size:  # the .part is already whole
            pass
        elif r.status_code not in (200, 206):
            raise DownloadError(f"{f.name}: the hub answered HTTP {r.status_code}.")
        else:
            if r.status_code == 200:
                have = 0  # the server ignored the range: start over
            task.resumed_bytes += have
            f.done = have
            with open(part, "ab" if have else "wb") as out:
                for chunk in r.iter_bytes(CHUNK):
                    if task.cancel_event.is_set():
                        raise Cancelled()
                    out.write(chunk)
                    f.done += len(chunk)
    size = part.stat().st_size
    if f.size and size != f.size:
        raise DownloadError(f"{f.name}: got {size} bytes, expected {f.size}; retry to resume.")
    if f.sha256 and _sha256(part) != f.sha256:
        part.unlink()
        raise DownloadError(f"{f.name}: sha256 mismatch; the partial file was removed, retry.")
    os.replace(part, final)
    f.done = size


def run(task: DownloadTask, data_dir: Path, endpoint: str | None = None, on_progress=None) -> Path:
    """Download every file of the task (blocking; run it in a thread). Sets the task's status."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    task.status = "downloading"
    try:
        dest = destination(data_dir, task.repo_id)
        if not task.files:
            plan(task, endpoint)
        headers = build_hf_headers(library_name="novamlx")
        with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=60.0)) as client:
            for f in task.files:
                if not (dest / f.name).resolve().is_relative_to(dest.resolve()):
                    raise DownloadError(f"refusing a file name outside the model folder: {f.name!r}")
                url = hf_hub_url(task.repo_id, f.name, revision=task.commit or task.revision, endpoint=endpoint)
                fetch_file(client, url, headers, dest / f.name, f, task)
                if on_progress:
                    on_progress(task)
        (dest / SOURCE_FILE).write_text(json.dumps({"repo_id": task.repo_id, "revision": task.revision,
                                                    "commit": task.commit, "downloaded": int(time.time())}))
        task.path, task.status = str(dest), "completed"
        return dest
    except Cancelled:
        task.status = "cancelled"
        raise
    except DownloadError as e:
        task.status, task.error = "failed", str(e)
        raise
    except Exception as e:  # noqa: BLE001 - network, disk or an odd hub answer: the task says which
        task.status, task.error = "failed", f"{type(e).__name__}: {e}; retry to resume."
        raise DownloadError(task.error) from e
    finally:
        task.finished = time.time()


def search(query: str, mlx_only: bool = True, sort: str = "trending", limit: int = 20,
           endpoint: str | None = None) -> list[dict]:
    from huggingface_hub import HfApi

    key = {"trending": "trending_score", "downloads": "downloads", "likes": "likes",
           "recent": "last_modified"}.get(sort)
    if key is None:
        raise DownloadError("sort must be trending, downloads, likes or recent.")
    found = HfApi(endpoint=endpoint).list_models(search=query or None, filter="mlx" if mlx_only else None,
                                                 sort=key, limit=limit)
    return [{"id": i.id, "downloads": i.downloads, "likes": i.likes, "trending_score": i.trending_score,
             "pipeline_tag": i.pipeline_tag, "library_name": i.library_name, "tags": i.tags or [],
             "last_modified": i.last_modified.isoformat() if i.last_modified else None} for i in found]
