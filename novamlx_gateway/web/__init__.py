"""The two browser pages: /chat on the inference port, /admin/dashboard on the admin port.

Plain files shipped inside the package (no CDN, no build step, nothing fetched at run time),
served with a strict Content-Security-Policy: scripts and styles only from this server, no
inline script, so text from a model or a user can never run as code even if it reached the
DOM as markup (and the pages build the DOM from text nodes, never from model HTML).
The pages themselves carry no secret and need no key: they ask for the key and send it as a
header with each API call.
"""
from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse
from starlette.routing import Route

from ..errors import APIError

STATIC = Path(__file__).parent / "static"
ASSETS = frozenset(p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file() and p.suffix != ".html")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
           "x-frame-options": "DENY"}
LANGUAGES = ("en", "zh-Hans", "zh-Hant-HK", "zh-Hant-TW", "ja", "ko", "fr", "de", "ru")


def page_routes(prefix: str, page: str) -> list[Route]:
    """`prefix` serves STATIC/page (no cache: a new release shows at once); `prefix`/assets/NAME
    serves the shared scripts, styles and catalogues (an hour's cache, revalidated by ETag)."""

    async def html(request: Request):
        return FileResponse(STATIC / page, media_type="text/html; charset=utf-8",
                            headers={**HEADERS, "cache-control": "no-cache"})

    async def asset(request: Request):
        name = request.path_params["name"]
        if name not in ASSETS:  # only files shipped in the package, never a path from the URL
            raise APIError(404, f"No asset '{name}'.", "not_found")
        return FileResponse(STATIC / name, headers={**HEADERS, "cache-control": "public, max-age=3600"})

    async def slash(request: Request):
        return RedirectResponse(prefix, status_code=308)

    return [Route(prefix, html, methods=["GET", "HEAD"]), Route(prefix + "/", slash, methods=["GET", "HEAD"]),
            Route(prefix + "/assets/{name:path}", asset, methods=["GET", "HEAD"])]
