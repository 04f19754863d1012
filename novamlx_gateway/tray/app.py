"""The tray icon: rumps on macOS (a menu bar extra), pystray elsewhere. Both redraw the menu from
model.menu() after every poll. On Linux pystray shows a menu through GTK or AppIndicator
(PyGObject: `pip install 'novamlx[tray]'`); without it only a click action is possible."""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading

from .i18n import Translator
from .model import POLL_S, SEPARATOR, Item, Server, TrayState, menu

log = logging.getLogger("novamlx.tray")


def icon_image(running: bool, size: int = 64):
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((4, 4, size - 4, size - 4), outline=(167, 139, 250, 255), width=4)
    d.ellipse((16, 16, size - 16, size - 16), fill=(139, 92, 246, 255) if running else (110, 110, 130, 255))
    return img


def service_action(what: str) -> None:
    """Start: install (idempotent) and start the login service; stop: ask the service manager."""
    from ..service import _manager, service_file, service_main

    if what == "start":
        service_main(["install"])
    else:
        for cmd in _manager("stop", service_file()):
            subprocess.run(cmd, capture_output=True, timeout=30)


def _pystray():
    """pystray with the first backend that works here: its default choice, then GTK, then Xlib
    (pystray gives up when its first choice's toolkit is half there, e.g. PyGObject without
    AppIndicator). No display, or no backend at all: a clear exit instead of a traceback."""
    if "pystray" in sys.modules:
        return sys.modules["pystray"]
    chosen = os.environ.get("PYSTRAY_BACKEND")
    errors = []
    for backend in [chosen] if chosen else [None, "gtk", "xorg"]:
        if backend:
            os.environ["PYSTRAY_BACKEND"] = backend
        try:
            import pystray

            return pystray
        except Exception as e:  # noqa: BLE001 - a backend's toolkit or the display is missing
            errors.append(f"{backend or 'default'}: {type(e).__name__}: {e}")
            for name in [n for n in sys.modules if n == "pystray" or n.startswith("pystray.")]:
                del sys.modules[name]
    raise SystemExit("the tray needs a desktop session (an X11 display); on Linux its menu also needs PyGObject "
                     "(pip install 'novamlx[tray]'). Tried " + "; ".join(errors))


def pystray_menu(items: list[Item]):
    pystray = _pystray()

    def entry(it: Item):
        if it is SEPARATOR or it.label == "-":
            return pystray.Menu.SEPARATOR
        if it.submenu is not None:
            return pystray.MenuItem(it.label, pystray.Menu(*[entry(s) for s in it.submenu]))
        checked = (lambda _item, c=it.checked: c) if it.checked is not None else None
        return pystray.MenuItem(it.label, _safe(it.action) if it.action else None, checked=checked,
                                enabled=it.action is not None)
    return pystray.Menu(*[entry(i) for i in items])


def _safe(action):
    def run(*_):
        try:
            action()
        except Exception as e:  # noqa: BLE001 - a failed click is logged, the tray stays up
            log.warning("tray action failed: %s", e)
    return run


def build_pystray(server: Server, t: Translator, state: TrayState | None = None):
    """The pystray icon with its first menu (the poller replaces the menu every POLL_S)."""
    pystray = _pystray()

    state = state or server.poll()
    icon = pystray.Icon("novamlx", icon_image(state.running), "NovaMLX")
    icon.menu = _full_menu(icon, state, server, t)
    return icon


def _full_menu(icon, state: TrayState, server: Server, t: Translator):
    return pystray_menu(menu(state, server, t, service_action) + [Item(t("tray.quit"), icon.stop)])


def run_pystray(server: Server, t: Translator) -> None:
    icon = build_pystray(server, t)
    stop = threading.Event()

    def poll():
        while not stop.wait(POLL_S):
            st = server.poll()
            icon.icon = icon_image(st.running)
            icon.menu = _full_menu(icon, st, server, t)
            icon.update_menu()

    threading.Thread(target=poll, daemon=True).start()
    try:
        icon.run()
    finally:
        stop.set()


def run_rumps(server: Server, t: Translator) -> None:  # pragma: no cover - macOS only
    try:
        import rumps  # a dependency on macOS only (pyproject marker)
    except ImportError as e:
        raise SystemExit("the menu bar app needs rumps: pip install rumps") from e

    def convert(items: list[Item]) -> list:
        out = []
        for it in items:
            if it is SEPARATOR or it.label == "-":
                out.append(rumps.separator)
            elif it.submenu is not None:
                out.append([rumps.MenuItem(it.label), convert(it.submenu)])
            else:
                mi = rumps.MenuItem(it.label, callback=(lambda _s, a=it.action: _safe(a)()) if it.action else None)
                if it.checked is not None:
                    mi.state = int(it.checked)
                out.append(mi)
        return out

    app = rumps.App("NovaMLX", title="◉", quit_button=t("tray.quit"))

    @rumps.timer(POLL_S)
    def refresh(_):
        st = server.poll()
        app.title = "◉" if st.running else "○"
        app.menu.clear()
        app.menu = convert(menu(st, server, t, service_action))

    app.run()


def tray_main(argv: list[str]) -> int:
    from ..config import load_config

    p = argparse.ArgumentParser(prog="novamlx-gateway tray", description="menu bar / system tray icon for a running server")
    p.add_argument("--url", help="the server (default: from the settings, http://HOST:PORT)")
    p.add_argument("--lang", help="one of en, zh-Hans, zh-Hant-HK, zh-Hant-TW, ja, ko, fr, de, ru (default: the system's)")
    args, rest = p.parse_known_args(argv)
    cfg = load_config(rest)
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    server = Server(args.url or f"http://{host}:{cfg.port}", f"http://{host}:{cfg.admin_port}" if cfg.admin_key else "",
                    (cfg.api_keys or [""])[0], cfg.admin_key or "")
    t = Translator(args.lang)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s tray %(levelname)s: %(message)s")
    (run_rumps if sys.platform == "darwin" else run_pystray)(server, t)
    return 0
