"""How a sentence-transformers folder says its vectors are made: the pooling (1_Pooling/config.json
via modules.json) and the prompts (config_sentence_transformers.json) that prefix queries and
documents. A folder without those files is mean-pooled with no prompt, as sentence-transformers
itself does for a bare transformer."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

POOLINGS = ("cls", "mean", "max", "lasttoken")


@dataclass
class Recipe:
    pooling: str = "mean"
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt: str | None = None

    def prompt(self, input_type: str | None) -> str:
        """The prefix for `input_type` (a prompt name: query, document, ...); the model's default
        prompt without one. KeyError names what this model has."""
        if input_type is None:
            return self.prompts.get(self.default_prompt or "", "")
        if input_type not in self.prompts:
            raise KeyError(input_type)
        return self.prompts[input_type]

    def first_prompt(self, *names: str) -> str:
        return next((self.prompts[n] for n in names if n in self.prompts), self.prompt(None))


def _json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_recipe(folder: str | Path) -> Recipe:
    folder = Path(folder)
    r = Recipe()
    for module in _json(folder / "modules.json") or []:
        if isinstance(module, dict) and module.get("type", "").endswith("Pooling"):
            cfg = _json(folder / module.get("path", "") / "config.json")
            modes = [p for p in POOLINGS if cfg.get(f"pooling_mode_{p}_token") or cfg.get(f"pooling_mode_{p}_tokens")
                     or cfg.get(f"pooling_mode_{p}")]
            r.pooling = modes[0] if modes else "mean"
    st = _json(folder / "config_sentence_transformers.json")
    if isinstance(st, dict):
        r.prompts = {k: v for k, v in (st.get("prompts") or {}).items() if isinstance(v, str)}
        r.default_prompt = st.get("default_prompt_name")
    return r


def pool(hidden: mx.array, mask: mx.array, how: str) -> mx.array:
    """[B, T, H] token states of right-padded rows -> [B, H] unit vectors."""
    m = mask[..., None].astype(hidden.dtype)
    if how == "cls":
        v = hidden[:, 0]
    elif how == "max":
        v = mx.max(mx.where(m > 0, hidden, mx.array(-1e9, hidden.dtype)), axis=1)
    elif how == "lasttoken":
        last = mask.astype(mx.int32).sum(axis=1) - 1
        v = hidden[mx.arange(hidden.shape[0]), last]
    else:
        v = (hidden * m).sum(axis=1) / mx.maximum(m.sum(axis=1), 1e-9)
    v = v.astype(mx.float32)
    return v / mx.maximum(mx.linalg.norm(v, axis=-1, keepdims=True), 1e-9)
