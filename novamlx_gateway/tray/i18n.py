"""The web pages' catalogues (web/static/i18n/LANG.json) for the tray's strings, so every
user-facing string of NovaMLX lives in one place per language."""
from __future__ import annotations

import json
import locale
import os
from functools import lru_cache

from ..web import LANGUAGES, STATIC


def system_language(environ=os.environ) -> str:
    raw = environ.get("LC_ALL") or environ.get("LC_MESSAGES") or environ.get("LANG") or ""
    if not raw:
        raw = (locale.getlocale()[0] or "en")
    tag = raw.split(".")[0].replace("_", "-").lower()
    if tag.startswith("zh"):
        return "zh-Hant-HK" if ("hk" in tag or "mo" in tag) else "zh-Hant-TW" if ("tw" in tag or "hant" in tag) else "zh-Hans"
    base = tag.split("-")[0]
    return base if base in LANGUAGES else "en"


@lru_cache(maxsize=None)
def catalogue(lang: str) -> dict:
    return json.loads((STATIC / "i18n" / f"{lang if lang in LANGUAGES else 'en'}.json").read_text(encoding="utf-8"))


class Translator:
    def __init__(self, lang: str | None = None):
        self.lang = lang or system_language()

    def __call__(self, key: str, **values) -> str:
        text = catalogue(self.lang).get(key) or catalogue("en").get(key) or key
        for k, v in values.items():
            text = text.replace("{" + k + "}", str(v))
        return text
