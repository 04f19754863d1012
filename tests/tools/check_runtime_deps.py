#!/usr/bin/env python3
"""Does every module that shipped code imports come from a runtime dependency?

A package that only the dev extra installs (pytest, httpx, openai...) is present on a developer's
machine and in CI, so a missing runtime dependency hides until a new user runs the server.
This reads pyproject.toml, follows the declared runtime dependencies through the installed
metadata of the project's venv, and lists every third-party import in shipped code (not tests/)
whose distribution is outside that closure. Imports inside `try:` blocks are reported as optional.

Usage (from the project root, with its venv's python; a copy of ../shared/tools/check_runtime_deps.py):
    .venv/bin/python ../shared/tools/check_runtime_deps.py [--packages novamlx_gateway,novamlx_worker,protocol]
Exit 1 when a hard import is missing from the runtime dependencies.
"""
import argparse
import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req: str) -> str:
    return canon(re.split(r"[\s\[<>=!~;(]", req.strip(), maxsplit=1)[0])


def applies(req: str) -> bool:
    """A requirement without an extra whose environment marker holds here."""
    if ";" not in req:
        return True
    marker = req.split(";", 1)[1]
    if "extra" in marker:
        return False
    try:
        from packaging.markers import Marker
        return Marker(marker).evaluate()
    except Exception:  # noqa: BLE001 - no packaging: count the requirement
        return True


def closure(roots: list[str]) -> set[str]:
    seen, todo = set(), [req_name(r) for r in roots if applies(r)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [req_name(r) for r in reqs if applies(r)]
    return seen


def imports(path: Path):
    """(top-level module, line, optional) for every absolute import in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for inner in node.body:
                for sub in ast.walk(inner):
                    guarded.add(id(sub))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], node.lineno, id(node) in guarded
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno, id(node) in guarded


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", default="novamlx_gateway,novamlx_worker,protocol")
    args = ap.parse_args()
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    runtime = closure(project.get("dependencies", []))
    own = {p for p in args.packages.split(",")}
    stdlib = set(sys.stdlib_module_names)
    providers = md.packages_distributions()
    hard, soft = [], []
    for pkg in own:
        for f in sorted(Path(pkg).rglob("*.py")):
            for mod, line, optional in imports(f):
                if mod in stdlib or mod in own or mod == "__future__":
                    continue
                dists = {canon(d) for d in providers.get(mod, [])}
                if dists & runtime:
                    continue
                where = f"{f}:{line} imports {mod}" + (f" (from {', '.join(sorted(dists))})" if dists
                                                      else " (not installed here)")
                (soft if optional else hard).append(where)
    for w in soft:
        print("optional, not a runtime dependency:", w)
    for w in hard:
        print("MISSING from [project.dependencies]:", w)
    if hard:
        print(f"{len(hard)} import(s) of shipped code come from no runtime dependency: a fresh "
              "`pip install .` (no dev extra) fails on them.")
        return 1
    print("runtime dependencies cover every import of shipped code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
