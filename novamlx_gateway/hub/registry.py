"""Discovery: the servable models in the data dir and the Hugging Face cache.

Only files are read (config.json, names); nothing is loaded. What kind a folder holds is
`naming.classify`; a .gguf file is a language model.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from protocol.naming import classify, mlx_lm_types, model_id_for

log = logging.getLogger("novamlx.registry")

@dataclass
class Found:
    id: str
    path: str
    kind: str  # llm | vlm | embedding | rerank
    size_bytes: int
    source: str  # data_dir | hf_cache


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def models_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "models"


def human_size(n: float | None) -> str:
    """Bytes as people read them: 512 B, 1.5 GB ("?" for unknown)."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())  # follows HF cache links to blobs


def _candidates(root: Path, depth: int = 2):
    """Folders holding a config.json and .gguf files, up to `depth` levels below root."""
    try:
        entries = sorted(root.iterdir()) if root.is_dir() else []
    except OSError as e:
        log.warning("cannot list %s: %s", root, e)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".gguf":
            yield entry
        elif entry.is_dir():
            if (entry / "config.json").exists():
                yield entry
            elif depth > 1:
                yield from _candidates(entry, depth - 1)


def _hf_snapshots(cache: Path):
    """The current snapshot of each cached model repo (refs/main, else the newest)."""
    try:
        repos = sorted(cache.glob("models--*")) if cache.is_dir() else []
    except OSError as e:
        log.warning("cannot list the Hugging Face cache %s: %s", cache, e)
        return
    for repo in repos:
        try:
            snaps = repo / "snapshots"
            if not snaps.is_dir():
                continue
            ref = repo / "refs" / "main"
            snap = snaps / ref.read_text().strip() if ref.exists() else None
            if snap is None or not snap.is_dir():
                dirs = [d for d in snaps.iterdir() if d.is_dir()]
                snap = max(dirs, key=lambda d: d.stat().st_mtime) if dirs else None
        except OSError as e:
            log.warning("skipping %s: %s", repo, e)
            continue
        if snap is not None:
            yield snap


def discover(data_dir: Path, include_hf_cache: bool = True) -> list[Found]:
    llm_types = mlx_lm_types()
    found: dict[str, Found] = {}
    sources = [("data_dir", p) for p in _candidates(models_dir(data_dir))]
    if include_hf_cache:
        sources += [("hf_cache", p) for p in _hf_snapshots(hf_cache_dir())]
    for source, path in sources:
        try:
            kind = "llm" if path.is_file() else classify(path, llm_types)
            if kind is None:
                continue
            model_id = model_id_for(path)
            if model_id not in found:  # the data dir wins over the cache
                found[model_id] = Found(model_id, str(path.absolute()), kind, folder_size(path), source)
        except OSError as e:  # an unreadable folder is skipped, never fatal
            log.warning("skipping %s: %s", path, e)
    return list(found.values())


def deletable_root(path: str, data_dir: Path) -> Path | None:
    """What to delete for a model at `path`: its folder or file under the data dir's models,
    or its whole repo folder in the HF cache. None for anything else (a user's own folder,
    the embedded wheel), which we never delete. Paths are resolved first (`..` and symlinks):
    `<data_dir>/models/../../etc` is /etc, and never deletable."""
    try:
        p = Path(path).resolve(strict=False)
        mine = models_dir(data_dir).resolve(strict=False)
        cache = hf_cache_dir().resolve(strict=False)
    except (OSError, RuntimeError):
        return None
    if mine in p.parents:
        return p
    if cache in p.parents:
        parts = p.relative_to(cache).parts
        if parts and parts[0].startswith("models--"):
            return cache / parts[0]
    return None


def delete(root: Path) -> int:
    size = folder_size(root)
    if root.is_symlink():
        os.unlink(root)  # the link, never what it points to
    elif root.is_dir():
        shutil.rmtree(root)
    else:
        os.unlink(root)
    parent = root.parent
    if parent.name != "models" and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()  # an empty org folder
    return size
