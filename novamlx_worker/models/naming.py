"""What a model on disk is called. One rule for the worker, the registry and the CLI.

- a .gguf file: its stem;
- a folder we downloaded: the hub id recorded in `.novamlx-source.json`;
- a Hugging Face cache snapshot (`models--org--name/snapshots/<sha>`): `org/name`;
- any other folder: its name.
"""
from __future__ import annotations

import json
from pathlib import Path

SOURCE_FILE = ".novamlx-source.json"


def model_id_for(path: str | Path) -> str:
    p = Path(path)
    if p.is_file():
        return p.stem
    try:
        return json.loads((p / SOURCE_FILE).read_text())["repo_id"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
        return p.parent.parent.name[len("models--"):].replace("--", "/", 1)
    return p.name
