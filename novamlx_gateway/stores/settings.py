"""Per-model settings, persisted to <data_dir>/model_settings.json (written atomically).

Every key is validated on the way in (a bad value is a 400 naming the field); sampling keys
become request defaults, `model_alias` a second name, `is_default` the model used when a
request names "default" (or none on routes that allow it)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import APIError

log = logging.getLogger("novamlx.settings")

# name -> (type(s), lower bound, upper bound)
BIG = 2**31 - 1  # no window or token count is larger
FIELDS: dict[str, tuple] = {
    "max_context_window": (int, 1, BIG), "max_tokens": (int, 1, BIG),
    "temperature": ((int, float), 0, 2), "top_p": ((int, float), 0, 1),
    "min_p": ((int, float), 0, 1), "frequency_penalty": ((int, float), -2, 2), "presence_penalty": ((int, float), -2, 2),
    "repetition_penalty": ((int, float), 0.01, 10), "seed": (int, -(2**63), 2**64 - 1), "ttl_seconds": (int, 0, BIG),
    "model_alias": (str, None, None), "is_pinned": (bool, None, None), "is_default": (bool, None, None),
    "kv_bits": (int, 2, 8), "kv_group_size": (int, 32, 128), "thinking_budget": (int, 0, BIG), "top_k": (int, 0, BIG),
    "display_name": (str, None, None), "description": (str, None, None),
    "draft_model": (str, None, None), "num_draft_tokens": (int, 1, 64),
}
SAMPLING_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty",
                     "repetition_penalty", "seed", "max_tokens", "thinking_budget")


def validate(changes: dict) -> dict:
    if not isinstance(changes, dict):
        raise APIError(400, "Settings must be a JSON object.", "invalid_value")
    out = {}
    for key, value in changes.items():
        if key not in FIELDS:
            raise APIError(400, f"Unknown setting '{key}'. Known: {', '.join(sorted(FIELDS))}.", "invalid_value", key)
        kind, lo, hi = FIELDS[key]
        if value is None:  # null clears a setting
            out[key] = None
            continue
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise APIError(400, f"Invalid '{key}': expected {getattr(kind, '__name__', 'number')}.", "invalid_type", key)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise APIError(400, f"Invalid '{key}': {value} is outside [{lo}, {hi if hi is not None else '∞'}].",
                           "invalid_value", key)
        if key == "kv_bits" and value not in (2, 3, 4, 6, 8):
            raise APIError(400, "Invalid 'kv_bits': use 2, 3, 4, 6 or 8.", "invalid_value", key)
        out[key] = value
    return out


class SettingsStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, json.JSONDecodeError) as e:
            log.warning("cannot read %s (%s); starting with no per-model settings", self.path, e)
            data = {}
        self.data: dict[str, dict] = {}
        for model_id, values in (data.items() if isinstance(data, dict) else []):
            self.data[model_id] = self._checked(model_id, values)

    def _checked(self, model_id: str, values) -> dict:
        """A file written by hand or by an older version: each bad value is skipped with a warning."""
        out = {}
        for key, value in (values.items() if isinstance(values, dict) else []):
            try:
                out.update(validate({key: value}))
            except APIError as e:
                log.warning("model_settings.json: skipping %s.%s: %s", model_id, key, e.message)
        return {k: v for k, v in out.items() if v is not None}

    def get(self, model_id: str) -> dict:
        return dict(self.data.get(model_id, {}))

    def update(self, model_id: str, changes: dict) -> dict:
        changes = validate(changes)
        current = self.data.get(model_id, {})
        current.update(changes)
        current = {k: v for k, v in current.items() if v is not None}
        if current.get("is_default"):
            for other, s in self.data.items():
                if other != model_id:
                    s.pop("is_default", None)
        self.data[model_id] = current
        self._save()
        return dict(current)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def alias_target(self, name: str) -> str | None:
        low = name.lower()
        for model_id, s in self.data.items():
            if (s.get("model_alias") or "").lower() == low:
                return model_id
        return None

    def default_model(self) -> str | None:
        return next((m for m, s in self.data.items() if s.get("is_default")), None)

    def sampling_defaults(self, model_id: str) -> dict:
        s = self.data.get(model_id, {})
        return {k: s[k] for k in SAMPLING_DEFAULTS if k in s}
