"""The pages' catalogues: every language has every key, every key the pages use exists, and
placeholders survive translation."""
from __future__ import annotations

import json
import re

from novamlx_gateway.web import LANGUAGES, STATIC

TRAY = STATIC.parent.parent / "tray"

CATALOGUES = {lang: json.loads((STATIC / "i18n" / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGUAGES}
# Keys the scripts build at run time from a server value (health status, download state, stats scope).
DYNAMIC = {"dash.status.": ("ok", "starting", "degraded"), "dash.dl.": ("queued", "downloading", "completed", "failed",
                                                                      "cancelled"), "dash.": ("session", "all_time")}


def used_keys() -> set[str]:
    keys = set()
    for f in STATIC.glob("*.html"):
        keys |= set(re.findall(r'data-i18n(?:-placeholder|-title|-aria)?="([^"]+)"', f.read_text()))
    for f in [*STATIC.glob("*.js"), *TRAY.glob("*.py")]:  # the tray's strings are in the same catalogues
        keys |= set(re.findall(r'\bt\("([^"]+)"', f.read_text()))
    return keys | {prefix + v for prefix, values in DYNAMIC.items() for v in values}


def test_the_nine_languages_have_every_key():
    assert set(CATALOGUES) == {"en", "zh-Hans", "zh-Hant-HK", "zh-Hant-TW", "ja", "ko", "fr", "de", "ru"}
    en = set(CATALOGUES["en"])
    for lang, strings in CATALOGUES.items():
        assert set(strings) == en, (lang, en ^ set(strings))
        assert all(isinstance(v, str) and v.strip() for v in strings.values()), lang


def test_every_key_the_pages_use_is_in_the_catalogue_and_none_is_unused():
    used, en = used_keys(), set(CATALOGUES["en"])
    assert used - en == set()
    assert en - used == set()


def test_placeholders_are_kept_in_every_translation():
    for key, text in CATALOGUES["en"].items():
        want = sorted(re.findall(r"\{\w+\}", text))
        for lang, strings in CATALOGUES.items():
            assert sorted(re.findall(r"\{\w+\}", strings[key])) == want, (lang, key)


def test_translations_are_translated():
    """A catalogue that is English under another name would pass the key checks."""
    en = CATALOGUES["en"]
    for lang, strings in CATALOGUES.items():
        if lang != "en":
            same = [k for k in en if strings[k] == en[k]]
            assert len(same) < len(en) * 0.2, (lang, same)
