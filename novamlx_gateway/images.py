"""Images in requests: data URIs, http(s) URLs and local paths, fetched within limits.

Every wire format turns its image blocks into `Part("image", source=...)`; `resolve` then
fetches each source, checks it (size, redirects, private addresses, allowed folders,
decoded pixel count), stores the bytes under <data_dir>/cache/images/<sha256> and gives
the worker that path and hash. Each refusal is a 400 that says what to change.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import os
import socket
from io import BytesIO
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import anyio
import httpx

from protocol import messages as m

from .config import Config
from .errors import APIError


def _bad(message: str, param: str = "messages") -> APIError:
    return APIError(400, message, "invalid_image", param)


def message(role: str, parts: list[m.Part], **kw) -> m.ChatMessage:
    """A protocol message: text joined into `content`; `parts` kept only when there are images."""
    text = "".join(p.text or "" for p in parts if p.type == "text")
    images = any(p.type == "image" for p in parts)
    return m.ChatMessage(role, text, parts=parts if images else None, **kw)


# ---- fetching ----

def _private(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified


async def _check_host(url: str, cfg: Config) -> str | None:
    """The address to connect to, checked (None: private addresses allowed, resolve as usual).
    The connection goes to this very address, so a DNS answer that changes between the check
    and the connection (rebinding) cannot move it to loopback."""
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise _bad(f"Image URL must be http(s): {url[:100]!r}.")
    if cfg.image_allow_private:
        return None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(u.hostname, u.port or (443 if u.scheme == "https" else 80),
                                                             type=socket.SOCK_STREAM)
    except OSError as e:
        raise _bad(f"Image host {u.hostname!r} could not be resolved: {e}.") from None
    if not infos or any(_private(info[4][0]) for info in infos):
        raise _bad(f"Image URL {u.hostname!r} points to a private, loopback or link-local address; such URLs are "
                   "refused (set image_allow_private to allow them).")
    return infos[0][4][0]


def _pinned(url: str, addr: str | None) -> tuple[str, dict, dict]:
    """(URL naming the checked address, headers, request extensions): Host and TLS SNI (and so
    certificate checks) keep the original name."""
    if addr is None:
        return url, {}, {}
    u = urlparse(url)
    ip = f"[{addr.split('%')[0]}]" if ":" in addr else addr
    netloc = f"{ip}:{u.port}" if u.port else ip
    host = u.netloc.rsplit("@", 1)[-1]
    return u._replace(netloc=netloc).geturl(), {"host": host}, {"sni_hostname": u.hostname} if u.scheme == "https" else {}


async def _fetch_url(url: str, cfg: Config) -> bytes:
    cap = int(cfg.image_max_mb * 1024 * 1024)
    async with httpx.AsyncClient(follow_redirects=False, timeout=cfg.image_fetch_timeout) as client:
        for _ in range(cfg.image_max_redirects + 1):
            target, headers, ext = _pinned(url, await _check_host(url, cfg))
            async with client.stream("GET", target, headers={"accept": "image/*", **headers}, extensions=ext) as r:
                if r.is_redirect:
                    url = urljoin(url, r.headers.get("location", ""))
                    continue
                if r.status_code != 200:
                    raise _bad(f"Fetching the image failed: HTTP {r.status_code} from {urlparse(url).hostname}.")
                if int(r.headers.get("content-length") or 0) > cap:
                    raise _bad(f"The image at {url[:100]} is larger than the {cfg.image_max_mb:g} MB limit.")
                data = bytearray()
                async for chunk in r.aiter_bytes():
                    data += chunk
                    if len(data) > cap:
                        raise _bad(f"The image at {url[:100]} is larger than the {cfg.image_max_mb:g} MB limit.")
                return bytes(data)
    raise _bad(f"Too many redirects fetching the image (more than {cfg.image_max_redirects}).")


def _data_uri(uri: str, cfg: Config) -> bytes:
    head, _, payload = uri.partition(",")
    if not head.endswith(";base64"):
        raise _bad("Image data URIs must be base64: data:image/png;base64,....")
    if len(payload) * 3 // 4 > cfg.image_max_mb * 1024 * 1024:
        raise _bad(f"The image is larger than the {cfg.image_max_mb:g} MB limit.")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("The image data URI is not valid base64.") from None


def _local(source: str, cfg: Config) -> bytes:
    raw = unquote(urlparse(source).path) if source.startswith("file://") else source
    if not cfg.image_dirs:
        raise _bad("Local image paths are turned off; configure image_dirs to allow folders.")
    path = Path(os.path.expanduser(raw)).resolve()  # symlinks and .. resolved before the check
    allowed = [Path(os.path.expanduser(d)).resolve() for d in cfg.image_dirs]
    if not any(path == d or d in path.parents for d in allowed):
        raise _bad(f"The image path {raw!r} is outside the allowed image folders.")
    if not path.is_file():
        raise _bad(f"No image file at {raw!r}.")
    if path.stat().st_size > cfg.image_max_mb * 1024 * 1024:
        raise _bad(f"The image {raw!r} is larger than the {cfg.image_max_mb:g} MB limit.")
    return path.read_bytes()


def _check_and_store(data: bytes, cfg: Config) -> m.ImageRef:
    from PIL import Image

    try:
        with Image.open(BytesIO(data)) as im:
            w, h = im.size
            if w * h > cfg.image_max_pixels:
                raise _bad(f"The image is {w}x{h} pixels, more than the {cfg.image_max_pixels:,} pixel limit.")
            im.verify()
    except APIError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for undecodable data
        raise _bad(f"The image could not be decoded ({type(e).__name__}: {str(e)[:120]}).") from None
    sha = hashlib.sha256(data).hexdigest()
    path = cfg.data_path / "cache" / "images" / sha[:2] / sha
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return m.ImageRef(sha, str(path))


async def _load(source: str, cfg: Config) -> m.ImageRef:
    if source.startswith("data:"):
        data = _data_uri(source, cfg)
    elif source.startswith(("http://", "https://")):
        try:
            with anyio.fail_after(cfg.image_fetch_timeout):
                data = await _fetch_url(source, cfg)
        except TimeoutError:
            raise _bad(f"Fetching the image took longer than {cfg.image_fetch_timeout:g} s.") from None
        except httpx.HTTPError as e:
            raise _bad(f"Fetching the image failed: {type(e).__name__}.") from None
    elif source.startswith(("file://", "/", "~")):
        data = await anyio.to_thread.run_sync(_local, source, cfg)
    else:
        raise _bad(f"Unsupported image source {source[:60]!r}: use a data URI, an http(s) URL or a file path.")
    return await anyio.to_thread.run_sync(_check_and_store, data, cfg)


async def resolve(messages: list[m.ChatMessage], cfg: Config, info: m.ModelInfo) -> None:
    """Fetch every image of the request (concurrently) and fill in its ImageRef."""
    parts = [p for msg in messages for p in msg.parts or [] if p.type == "image"]
    if not parts:
        return
    if info.kind != "vlm":
        raise APIError(400, f"The model `{info.id}` does not accept images.", "image_input_not_supported", "messages")
    if len(parts) > cfg.image_max_count:
        raise _bad(f"{len(parts)} images in one request; the limit is {cfg.image_max_count}.")
    refs = await asyncio.gather(*(_load(p.source or "", cfg) for p in parts))
    for p, ref in zip(parts, refs):
        p.image, p.source = ref, None
