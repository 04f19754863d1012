"""The tray: its state model and menu against a live gateway, and the real icon's menu opened
under Xvfb (pystray's GTK backend), with a screenshot."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from novamlx_gateway.tray.i18n import Translator, system_language
from novamlx_gateway.tray.model import Server as TrayServer, menu
from tests.conftest import API_KEY, ROOT, Server, free_port

ADMIN = "adm-tray"


@pytest.fixture(scope="module")
def gw(tiny_model, tmp_path_factory):
    s = Server(["--model", str(tiny_model), "--embedding-model", "none", "--admin-key", ADMIN,
                "--health-interval", "0.5"], tmp_path_factory.mktemp("tray-data")).wait_ready()
    yield s
    s.stop()


def tray_of(s: Server, admin=True) -> TrayServer:
    return TrayServer(s.base_url, f"http://127.0.0.1:{s.admin_port}" if admin else "", API_KEY, ADMIN if admin else "")


def labels(items) -> list[str]:
    return [i.label for i in items]


def find(items, prefix: str):
    return next(i for i in items if i.label.startswith(prefix))


def test_state_and_menu_follow_the_server(gw):
    tray = tray_of(gw)
    gw.openai().chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    st = tray.poll()
    assert st.running and st.loaded == ["tiny-llama"] and st.uptime_s > 0 and st.rss_bytes > 0
    assert st.session_requests >= 1 and [m["id"] for m in st.models] == ["tiny-llama"]
    items = menu(st, tray, Translator("en"))
    assert labels(items)[:3] == ["NovaMLX: running", f"Address: {gw.base_url}", "Loaded: tiny-llama"]
    assert find(items, "Active requests").label == "Active requests: 0 (queued 0)"
    models = find(items, "Models").submenu
    assert models[0].label == "tiny-llama" and models[0].checked is True
    assert models[-1].label.startswith("Downloaded: ")
    models[0].action()  # unload from the menu
    st = tray.poll()
    assert st.loaded == [] and not st.models[0]["loaded"]
    find(menu(st, tray, Translator("en")), "Models").submenu[0].action()  # and load again
    assert tray.poll().loaded == ["tiny-llama"]
    limits = find(find(items, "Settings").submenu, "Memory limit").submenu
    assert [i.label for i in limits] == ["Automatic", "50%", "75%", "90%"]
    find(limits, "75%").action()
    st = tray.poll()
    assert st.memory_mode == "75%"
    assert find(find(menu(st, tray, Translator("en")), "Settings").submenu, "Memory limit").submenu[2].checked
    find(limits, "Automatic").action()
    agents = find(items, "Agents").submenu
    assert len(agents) == 5 and all(("not installed" in a.label) != bool(a.action) for a in agents)


def test_without_the_admin_key_and_when_the_server_is_down(gw):
    st = tray_of(gw, admin=False).poll()
    items = menu(st, tray_of(gw, admin=False), Translator("ja"))
    assert items[0].label == "NovaMLX：実行中"
    models = find(items, "モデル").submenu
    assert models[0].label == "tiny-llama" and models[0].action is None  # load/unload needs the admin key
    assert find(items, "ダッシュボードを開く").action is None
    down = TrayServer(f"http://127.0.0.1:{free_port()}")
    st = down.poll()
    assert not st.running and st.error
    assert labels(menu(st, down, Translator("de")))[0] == "NovaMLX: läuft nicht"


def test_system_language():
    assert system_language({"LANG": "ja_JP.UTF-8"}) == "ja"
    assert system_language({"LANG": "zh_TW.UTF-8"}) == "zh-Hant-TW"
    assert system_language({"LANG": "zh_HK.UTF-8"}) == "zh-Hant-HK"
    assert system_language({"LANG": "zh_CN.UTF-8"}) == "zh-Hans"
    assert system_language({"LANG": "pt_BR.UTF-8"}) == "en"


def _gtk_missing() -> str | None:
    if not all(shutil.which(c) for c in ("Xvfb", "import", "xdotool", "dbus-run-session")):
        return "Xvfb, xdotool, ImageMagick's import or dbus-run-session is missing (bin/test installs them with apt as root)"
    try:
        import gi

        gi.require_version("Gtk", "3.0")
        from gi.repository import Gtk  # noqa: F401
    except (ImportError, ValueError):
        return "PyGObject with GTK 3 is not installed (bin/test adds it where the build headers are)"
    return None


@pytest.mark.skipif(_gtk_missing() is not None, reason=str(_gtk_missing()))
@pytest.mark.parametrize("lang", ["en", "zh-Hans"])
def test_tray_menu_opens_under_xvfb(gw, tmp_path, lang):
    from PIL import Image

    display = f":{90 + os.getpid() % 50 + (lang != 'en')}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        subprocess.run(["xdotool", "mousemove", "40", "30"], env={**os.environ, "DISPLAY": display}, check=True)
        out = tmp_path / f"tray-menu-linux-{lang}.png"
        # a desktop session has a D-Bus session bus (pystray's GTK backend wants one for notifications)
        r = subprocess.run(["dbus-run-session", "--", sys.executable, str(ROOT / "tests" / "fixtures" / "tray_popup.py"), gw.base_url,
                            f"http://127.0.0.1:{gw.admin_port}", API_KEY, ADMIN, lang, str(out)],
                           env={**os.environ, "DISPLAY": display, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        img = Image.open(out).convert("RGB")
        # the menu is drawn: a block of many pixels differing from Xvfb's black background
        box = img.getbbox()
        assert box is not None and box[2] - box[0] > 150 and box[3] - box[1] > 200, box
        if os.environ.get("NOVAMLX_SCREENSHOTS"):
            img.crop(box).save(Path(os.environ["NOVAMLX_SCREENSHOTS"]) / out.name)
    finally:
        xvfb.terminate()
        xvfb.wait(10)


def test_without_a_desktop_the_tray_says_so(gw):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
    r = subprocess.run([sys.executable, "-m", "novamlx_gateway", "tray", "--url", gw.base_url], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "the tray needs a desktop session" in r.stderr and "Traceback" not in r.stderr
