"""`novamlx-gateway models list|search|pull|rm`: the model store from a terminal.

Works without a running server (it reads and writes the data dir); a running server sees
new or removed models after `POST /admin/models/discover` or its next start.
"""
from __future__ import annotations

import argparse
import sys
import threading

from pathlib import Path

from protocol.naming import DEFAULT_EMBEDDING_ID, DEFAULT_MODEL_ID, default_embedding_path, default_model_path, model_id_for

from ..config import load_config
from . import download as dl
from .registry import deletable_root, delete, discover, folder_size, human_size


def _bar(task: dl.DownloadTask, width: int = 30) -> str:
    total, done = task.total, task.done
    frac = done / total if total else 0.0
    current = next((f.name for f in task.files if f.done < f.size), "")
    return f"\r[{'#' * int(frac * width):<{width}}] {frac * 100:5.1f}% {human_size(done)}/{human_size(total)} {current[:40]:<40}"


def pull(cfg, repo_id: str, revision: str, allow: list[str] | None) -> int:
    task = dl.DownloadTask(repo_id, revision, allow)
    done = threading.Event()
    result: dict = {}

    def work():
        try:
            result["path"] = dl.run(task, cfg.data_path, cfg.hf_endpoint or None)
        except (dl.Cancelled, dl.DownloadError) as e:
            result["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, daemon=True).start()
    try:
        while not done.wait(0.25):
            if task.files:
                print(_bar(task), end="", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        task.cancel_event.set()
        done.wait(10)
        print(f"\ncancelled; {human_size(task.done)} kept: run the same pull again to resume.", file=sys.stderr)
        return 130
    if "error" in result:
        print(f"\nerror: {result['error']}", file=sys.stderr)
        return 1
    print(_bar(task), file=sys.stderr)
    resumed = f" ({human_size(task.resumed_bytes)} resumed)" if task.resumed_bytes else ""
    print(f"{repo_id} -> {result['path']}{resumed}")
    return 0


def _served(cfg) -> list[tuple[str, str, int | None, str, str]]:
    """(id, kind, size, source, path) of every model a server with these settings serves:
    the configured ones (or the embedded defaults), then what discovery finds on disk."""
    rows = []
    for spec in cfg.models or [None]:
        try:
            path = spec if spec else default_model_path()
        except FileNotFoundError:
            continue
        p = Path(path).expanduser()
        rows.append((DEFAULT_MODEL_ID if not spec else model_id_for(p) if p.exists() else spec, "llm",
                     folder_size(p) if p.exists() else None, "embedded" if not spec else "config", str(p)))
    for spec in cfg.embedding_models or [None]:
        if spec == "none":
            continue
        path = spec or default_embedding_path()
        if path:
            p = Path(path).expanduser()
            rows.append((DEFAULT_EMBEDDING_ID if not spec else model_id_for(p), "embedding",
                         folder_size(p) if p.exists() else None, "embedded" if not spec else "config", str(p)))
    seen = {r[0] for r in rows}
    return rows + [(f.id, f.kind, f.size_bytes, f.source, f.path)
                   for f in discover(cfg.data_path, cfg.discover_hf_cache) if f.id not in seen]


def main(argv: list[str]) -> int:
    common = argparse.ArgumentParser(add_help=False)  # accepted before or after the subcommand
    common.add_argument("--data-dir", default=argparse.SUPPRESS)
    common.add_argument("--hf-endpoint", default=argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="novamlx-gateway models", description="list, search, pull and remove models",
                                parents=[common])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the models a server serves: embedded or configured, then the data dir and "
                                "the Hugging Face cache", parents=[common])
    s = sub.add_parser("search", help="search the hub", parents=[common])
    s.add_argument("query", nargs="?", default="")
    s.add_argument("--all", action="store_true", help="not only MLX models")
    s.add_argument("--sort", default="trending", choices=["trending", "downloads", "likes", "recent"])
    s.add_argument("--limit", type=int, default=20)
    pl = sub.add_parser("pull", help="download a model from the hub (resumable)", parents=[common])
    pl.add_argument("repo_id")
    pl.add_argument("--revision", default="main")
    pl.add_argument("--include", action="append", help="only files matching this glob (repeatable)")
    rm = sub.add_parser("rm", help="delete a downloaded model", parents=[common])
    rm.add_argument("model")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask")
    args = p.parse_args(argv)
    flags = [f for k in ("data_dir", "hf_endpoint") if getattr(args, k, None)
             for f in (f"--{k.replace('_', '-')}", getattr(args, k))]
    cfg = load_config(flags)

    if args.cmd == "list":
        rows = _served(cfg)
        if not rows:
            print(f"no models: none configured, none embedded, none in {cfg.data_path / 'models'} or the "
                  "Hugging Face cache")
        for mid, kind, size, source, path in rows:
            print(f"{mid:<50} {kind:<9} {human_size(size):>10}  {source:<8} {path}")
        return 0
    if args.cmd == "search":
        try:
            rows = dl.search(args.query, not args.all, args.sort, args.limit, cfg.hf_endpoint or None)
        except Exception as e:  # noqa: BLE001 - the hub is remote: say what went wrong, exit non-zero
            print(f"error: {e}", file=sys.stderr)
            return 1
        for r in rows:
            print(f"{r['id']:<60} downloads={r['downloads'] or 0:<10} likes={r['likes'] or 0}")
        return 0
    if args.cmd == "pull":
        return pull(cfg, args.repo_id, args.revision, args.include)
    found = {f.id: f for f in discover(cfg.data_path, cfg.discover_hf_cache)}
    f = found.get(args.model)
    root = deletable_root(f.path, cfg.data_path) if f else None
    if root is None:
        print(f"error: no downloaded model '{args.model}' (see `novamlx-gateway models list`)", file=sys.stderr)
        return 1
    if not args.yes and input(f"delete {root} ({human_size(f.size_bytes)})? [y/N] ").strip().lower() != "y":
        return 1
    print(f"deleted {root}, freed {human_size(delete(root))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
