"""What the tray shows: the server's state every 2 s (GET /health, /v1/stats and, with the admin
key, /admin/models), and the menu built from it as plain items that any toolkit can draw."""
from __future__ import annotations

import webbrowser
from dataclasses import dataclass, field
from typing import Callable

import httpx

from .. import agents
from ..hub.registry import human_size
from .i18n import Translator

POLL_S = 2.0
MEMORY_LIMITS = ("auto", "50%", "75%", "90%")


@dataclass
class Item:
    label: str
    action: Callable[[], None] | None = None  # None: a line of information
    checked: bool | None = None
    submenu: list["Item"] | None = None

    @property
    def enabled(self) -> bool:
        return self.action is not None or self.submenu is not None


SEPARATOR = Item("-")


@dataclass
class TrayState:
    running: bool = False
    url: str = ""
    error: str = ""
    loaded: list[str] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)  # the admin list (with the admin key), else the loaded ids
    rss_bytes: int = 0
    mlx_bytes: int = 0
    memory_mode: str = ""
    running_requests: int = 0
    queued: int = 0
    uptime_s: float = 0.0
    tokens_per_s: float = 0.0
    session_requests: int = 0
    update: dict = field(default_factory=dict)
    agents: list[dict] = field(default_factory=list)

    @property
    def downloaded(self) -> int:
        return sum(1 for m in self.models if m.get("downloaded"))

    @property
    def disk_bytes(self) -> int:
        return sum(m.get("size_bytes") or 0 for m in self.models)


class Server:
    """The HTTP calls the tray makes (the API key for /v1, the admin key for /admin)."""

    def __init__(self, url: str, admin_url: str = "", api_key: str = "", admin_key: str = "", timeout: float = 3.0):
        self.url, self.admin_url = url.rstrip("/"), admin_url.rstrip("/")
        self.api_key, self.admin_key, self.timeout = api_key, admin_key, timeout

    def _get(self, url: str, key: str) -> dict:
        r = httpx.get(url, headers={"authorization": f"Bearer {key}"} if key else {}, timeout=self.timeout)
        r.raise_for_status()
        return r.json()

    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        r = httpx.request(method, self.admin_url + path, json=body, timeout=120,
                          headers={"authorization": f"Bearer {self.admin_key}"})
        r.raise_for_status()
        return r.json()

    def poll(self) -> TrayState:
        st = TrayState(url=self.url, agents=agents.detect())
        try:
            h = self._get(self.url + "/health", "")
        except (httpx.HTTPError, ValueError) as e:
            st.error = f"{type(e).__name__}: {e}"[:200]
            return st
        live = h.get("health") or {}
        st.running = h.get("status") == "ok"
        st.loaded = list(live.get("models") or [])
        st.rss_bytes, st.mlx_bytes = live.get("rss_bytes", 0), live.get("mlx_active_bytes", 0)
        st.memory_mode = (live.get("memory") or {}).get("mode", "")
        st.running_requests, st.queued = h["requests"]["running"], h["requests"]["queued"]
        st.uptime_s, st.tokens_per_s = h.get("uptime_s", 0.0), live.get("tokens_per_s", 0.0)
        st.update = h.get("update") or {}
        try:
            stats = self._get(self.url + "/v1/stats", self.api_key)
            st.session_requests = stats.get("session", {}).get("requests", 0)
        except (httpx.HTTPError, ValueError):
            pass  # a key the tray was not given: the rest still shows
        st.models = [{"id": i, "loaded": True} for i in st.loaded]
        if self.admin_url and self.admin_key:
            try:
                st.models = self._get(self.admin_url + "/admin/models", self.admin_key)["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                pass
        return st


def _duration(s: float) -> str:
    s = int(s)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    return f"{d}d {h}h" if d else f"{h}h {m}m" if h else f"{m}m {s % 60}s"


def menu(st: TrayState, server: Server, t: Translator, service: Callable[[str], None] | None = None) -> list[Item]:
    """The whole menu for one state; actions call the server (or the service manager)."""
    if not st.running:
        head = [Item(t("tray.stopped")), Item(t("tray.address", url=st.url))]
    else:
        head = [Item(t("tray.running")), Item(t("tray.address", url=st.url)),
                Item(t("tray.loadedModels", list=", ".join(st.loaded) or "–")),
                Item(t("tray.memory", used=human_size(st.rss_bytes), mlx=human_size(st.mlx_bytes))),
                Item(t("tray.active", n=st.running_requests, queued=st.queued)),
                Item(t("tray.uptime", time=_duration(st.uptime_s), rate=f"{st.tokens_per_s:.1f}"))]
    if st.update.get("available"):
        url = st.update.get("url") or ""
        head.append(Item(t("tray.update", latest=st.update["latest"]),
                         (lambda: webbrowser.open(url)) if url.startswith(("http://", "https://")) else None))
    admin = bool(server.admin_url and server.admin_key)

    def toggle(m: dict) -> Callable[[], None] | None:
        if not admin:
            return None
        return lambda: server.admin("POST", "/admin/models/unload" if m.get("loaded") else "/admin/models/load",
                                    {"model": m["id"]})

    models = [Item(m["id"], toggle(m), checked=bool(m.get("loaded"))) for m in st.models]
    models.append(Item(t("tray.downloaded", n=st.downloaded, size=human_size(st.disk_bytes)) if admin else t("tray.needAdmin")))
    target = agents.Target(base_url=st.url, api_key=server.api_key or None, model=(st.loaded or ["default"])[0])
    agent_items = [Item(t("tray.writeConfig", name=a["title"]), (lambda n=a["name"]: agents.write(n, target)))
                   if a["installed"] else Item(t("tray.notInstalled", name=a["title"])) for a in st.agents]
    limits = [Item(t("tray.auto") if v == "auto" else v,
                   (lambda v=v: server.admin("PUT", "/admin/api/memory", {"max_process_memory": v})) if admin else None,
                   checked=st.memory_mode == v) for v in MEMORY_LIMITS]
    settings = [Item(t("tray.memoryLimit"), submenu=limits)]
    if service is not None:
        settings += [Item(t("tray.startService"), lambda: service("start")),
                     Item(t("tray.stopService"), lambda: service("stop"))]
    dashboard = server.admin_url + "/admin/dashboard" if server.admin_url else ""
    return [*head, SEPARATOR,
            Item(t("tray.models"), submenu=models),
            Item(t("tray.agents"), submenu=agent_items),
            Item(t("tray.settings"), submenu=settings),
            Item(t("tray.openChat"), lambda: webbrowser.open(st.url + "/chat")),
            Item(t("tray.openDashboard"), (lambda: webbrowser.open(dashboard)) if dashboard else None),
            SEPARATOR]
