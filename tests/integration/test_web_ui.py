"""The two pages in a real browser: /chat and /admin/dashboard, driven in headless Chromium
(Debian's chromium, through Playwright) against the real gateway and worker."""
from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, ROOT, SCRIPTS, Server
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.fake_releases import FakeReleases
from tests.fixtures.tiny_vlms import build_tiny_qwen2_vl

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (dev extra)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (bin/test installs Debian's "
                                "chromium where it runs as root with apt; elsewhere install it to run these tests)")
ADMIN_KEY = "adm-web-key"
# Chromium as the project's CI runs it: no sandbox (root), and no background calls to Google's
# hosts, which this machine's closed network would refuse many times over.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SHOTS = Path(os.environ.get("NOVAMLX_SCREENSHOTS", "")) if os.environ.get("NOVAMLX_SCREENSHOTS") else None
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def hub(tiny_model):
    h = FakeHub()
    h.add_folder("acme/tiny-web", tiny_model, downloads=42, likes=7, trendingScore=3)
    yield h
    h.close()


@pytest.fixture(scope="module")
def ui(tiny_long, hub, tmp_path_factory):
    vlm = build_tiny_qwen2_vl(tmp_path_factory.mktemp("web-vlm") / "tiny-qwen2-vl")
    releases = FakeReleases("v9.0.0")
    s = Server(["--model", str(tiny_long), "--model", str(vlm), "--embedding-model", "none", "--admin-key", ADMIN_KEY,
                "--health-interval", "0.5", "--update-check", "on", "--update-url", releases.url],
               tmp_path_factory.mktemp("web-data"), env={"NOVAMLX_TEST_SCRIPTS": str(SCRIPTS), "HF_ENDPOINT": hub.url})
    yield s.wait_ready()
    s.stop()
    releases.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Page:
    """A fresh browser context (empty localStorage) with everything the page did recorded:
    script errors, dialogs it opened, requests it made."""

    def __init__(self, browser, viewport=DESKTOP, locale="en-US"):
        self.ctx = browser.new_context(viewport=viewport, locale=locale)
        self.page = self.ctx.new_page()
        self.errors, self.dialogs, self.requests = [], [], []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.set_default_timeout(30_000)

    def close(self):
        self.ctx.close()


@pytest.fixture
def page(browser):
    p = Page(browser)
    yield p
    p.close()


def shoot(pg, name: str) -> None:
    if SHOTS:
        SHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SHOTS / f"{name}.png"))


def open_chat(p: Page, s: Server):
    pg = p.page
    pg.goto(s.base_url + "/chat")
    pg.fill("#api-key", API_KEY)
    pg.dispatch_event("#api-key", "change")
    pg.wait_for_function("() => document.querySelector('#model').options.length > 0")
    return pg


def send(pg, text: str) -> None:
    pg.fill("#input", text)
    pg.press("#input", "Enter")


def wait_reply_done(pg, timeout=120_000) -> None:
    pg.wait_for_selector("#send:not(.hidden)", timeout=timeout)


def test_pages_served_without_keys_and_with_a_strict_policy(ui):
    r = httpx.get(ui.base_url + "/chat")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert httpx.get(ui.base_url + "/v1/models").status_code == 401  # the page is open, the API is not
    asset = httpx.get(ui.base_url + "/chat/assets/chat.js")
    assert asset.status_code == 200 and "max-age" in asset.headers["cache-control"] and asset.headers["etag"]
    assert httpx.get(ui.base_url + "/chat/assets/nope.js").status_code == 404
    assert httpx.get(ui.base_url + "/chat/assets/%2e%2e/__init__.py").status_code == 404
    admin = f"http://127.0.0.1:{ui.admin_port}"
    assert httpx.get(admin + "/admin/dashboard").status_code == 200
    assert httpx.get(admin + "/admin/api/status").status_code == 401
    assert httpx.get(ui.base_url + "/admin/dashboard", headers=ui.headers).status_code == 404  # admin port only


def test_chat_streams_markdown_thinking_and_keeps_history(ui, page):
    pg = open_chat(page, ui)
    assert pg.input_value("#model") == "tiny-long"  # the server's first model is picked
    posts = []
    pg.on("request", lambda r: posts.append(r.post_data) if r.url.endswith("/v1/chat/completions") else None)
    send(pg, "SCRIPT:web_markdown")
    assert pg.locator("#stop").is_visible() or pg.locator(".msg.assistant .meta").count()  # stop replaced send
    wait_reply_done(pg)
    assert json.loads(posts[0])["stream"] is True  # the answer came as server-sent events
    reply = pg.locator(".msg.assistant").last
    assert reply.locator("strong").inner_text() == "bold" and reply.locator("em").inner_text() == "italic"
    assert "def hello" in reply.locator(".code pre").inner_text()
    assert reply.locator(".code .tok-keyword").first.inner_text() in ("def", "return")
    assert reply.locator(".code button.copy").count() == 1
    thinking = reply.locator("details.thinking")  # collapsed once the answer came (open while only thoughts stream)
    if not thinking.evaluate("d => d.open"):
        thinking.locator("summary").click()
    assert "The user wants to see Markdown." in thinking.inner_text()
    assert reply.locator("li").count() == 2
    # model text that looks like markup stays text: no element, no dialog, no request for "x"
    assert "<img src=x onerror=alert(1)>" in reply.inner_text()
    assert reply.locator("img").count() == 0
    assert reply.locator("a[href^='javascript']").count() == 0
    assert reply.locator("a[href='https://example.com/docs']").count() == 1
    time.sleep(0.5)
    assert page.dialogs == [] and not [u for u in page.requests if u.rstrip("/").endswith("/x")]
    assert "tok/s" in reply.locator(".meta").inner_text()
    # reload: the conversation is in the history and opens again
    pg.reload()
    pg.wait_for_selector(".history-item")
    assert pg.locator(".history-item .title").first.inner_text() == "SCRIPT:web_markdown"
    pg.click("#new-chat")
    assert pg.locator(".msg").count() == 0
    pg.click(".history-item")
    assert pg.locator(".msg.assistant strong").inner_text() == "bold"
    assert page.errors == []


def test_stop_aborts_the_request_on_the_server(ui, page):
    pg = open_chat(page, ui)
    send(pg, "SCRIPT:web_long")
    pg.wait_for_function("() => document.querySelector('.msg.assistant .bubble')?.innerText.includes('lighthouse')")
    assert ui.health()["requests"]["running"] == 1
    pg.click("#stop")
    wait_reply_done(pg, timeout=10_000)
    deadline = time.time() + 10
    while time.time() < deadline and (ui.health()["requests"]["running"] or ui.health()["health"]["running"]):
        time.sleep(0.2)
    h = ui.health()
    assert h["requests"]["running"] == 0 and h["health"]["running"] == 0 and h["in_flight"] == 0
    assert "Stopped" in pg.locator(".msg.assistant .meta").last.inner_text()
    assert page.errors == []


def test_system_prompt_and_language(ui, page):
    pg = open_chat(page, ui)
    pg.click("#system-btn")
    pg.fill("#system-text", "You are terse.")
    pg.click("#system-save")
    assert pg.locator("#system-modal").is_hidden()
    pg.select_option("#lang", "ja")
    pg.wait_for_function("() => document.querySelector('#send').textContent === '送信'")
    assert pg.locator("#new-chat").inner_text() == "新しいチャット"
    pg.reload()
    pg.wait_for_function("() => document.querySelector('#send').textContent === '送信'")  # the choice is kept
    assert pg.evaluate("localStorage.getItem('novamlx.system')") == "You are terse."


def test_image_upload_to_a_vlm(ui, page):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (120, 40, 200)).save(buf, format="PNG")
    pg = open_chat(page, ui)
    pg.select_option("#model", "tiny-qwen2-vl")
    pg.set_input_files("#file", files=[{"name": "pic.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    pg.wait_for_selector("#attachments img")
    before = ui.stats()["engine"]["total_completed"]
    send(pg, "What is in this picture?")
    wait_reply_done(pg)
    assert pg.locator(".msg.error").count() == 0, pg.locator(".msg.error").inner_text()
    assert ui.stats()["engine"]["total_completed"] == before + 1
    thumb = pg.locator(".msg.user .thumbs img")
    assert thumb.count() == 1 and thumb.get_attribute("src").startswith("data:image/png;base64,")
    thumb.click()
    assert pg.locator("#lightbox").is_visible()
    pg.click("#lightbox")
    assert pg.locator("#lightbox").is_hidden()
    # dropped on the composer and pasted into the box, images are attached the same way
    for event in ("drop", "paste"):
        pg.evaluate("""([kind, bytes]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], "pic.png", {type: "image/png"}));
            const target = kind === "drop" ? document.querySelector("#composer") : document.querySelector("#input");
            const ev = kind === "drop" ? new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true})
                                       : new ClipboardEvent("paste", {clipboardData: dt, bubbles: true, cancelable: true});
            target.dispatchEvent(ev);
        }""", [event, list(buf.getvalue())])
        pg.wait_for_selector("#attachments img")
        pg.click("#attachments .thumb button")  # and removed again
        assert pg.locator("#attachments img").count() == 0
    assert page.errors == []


def open_dashboard(p: Page, s: Server, key=ADMIN_KEY):
    pg = p.page
    pg.goto(f"http://127.0.0.1:{s.admin_port}/admin/dashboard")
    pg.fill("#admin-key", key)
    pg.click("#login button[type=submit]")
    return pg


def test_dashboard_key_models_settings(ui, page):
    pg = open_dashboard(page, ui, key="wrong")
    pg.wait_for_function("() => document.querySelector('#login-error').textContent.length > 0")
    assert pg.locator("#dash").is_hidden() and "refused" in pg.inner_text("#login-error")
    pg.fill("#admin-key", ADMIN_KEY)
    pg.click("#login button[type=submit]")
    pg.wait_for_selector("#models tr[data-model='tiny-long']")
    assert "Healthy" in pg.inner_text("#cards") and "MB" in pg.inner_text("#cards")
    assert pg.locator("#device td").count() >= 6
    assert pg.inner_text("#update") == "Update available: 9.0.0"  # the fake releases server's newer tag
    assert all(u.find(ADMIN_KEY) < 0 for u in page.requests)  # the key travels in a header, never a URL
    # settings editor: invalid values get the API's own error, valid ones are saved
    pg.click("#models tr[data-model='tiny-long'] button.settings")
    pg.fill("#settings-text", json.dumps({"temperature": 9}))
    pg.click("#settings-form button[type=submit]")
    pg.wait_for_function("() => document.querySelector('#settings-error').textContent.includes('temperature')")
    pg.fill("#settings-text", json.dumps({"temperature": 0.3, "display_name": "Tiny"}))
    pg.click("#settings-form button[type=submit]")
    pg.wait_for_selector("#settings-modal", state="hidden")
    got = httpx.get(f"http://127.0.0.1:{ui.admin_port}/admin/models/tiny-long/settings",
                    headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()["settings"]
    assert got["temperature"] == 0.3 and got["display_name"] == "Tiny"
    # pin from the table
    pg.click("#models tr[data-model='tiny-long'] button:has-text('Pin')")
    pg.wait_for_function("() => document.querySelector(\"#models tr[data-model='tiny-long']\").innerText.includes('Pinned')")
    assert page.errors == []


def test_dashboard_hub_search_download_cancel(ui, hub, page):
    pg = open_dashboard(page, ui)
    pg.wait_for_selector("#models tr")
    pg.fill("#hub-query", "tiny")
    pg.click("#hub-form button[type=submit]")
    pg.wait_for_selector("#hub-results code:has-text('acme/tiny-web')")
    hub.throttle = 0.05
    try:
        pg.click("#hub-results button:has-text('Download')")
        pg.wait_for_selector("#downloads tr[data-task]")
        pg.wait_for_function("() => Number(document.querySelector('#downloads progress')?.value) > 0", timeout=20_000)
        pg.click("#downloads button:has-text('Cancel')")
        pg.wait_for_function("() => document.querySelector('#downloads .task-status').innerText.includes('Cancelled')")
    finally:
        hub.throttle = 0
    assert page.errors == []


@pytest.mark.parametrize("lang", ["en", "zh-Hans"])
@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_layouts_at_both_widths(ui, browser, lang, width):
    """Both pages render at desktop and phone widths in a Latin and a CJK language, nothing
    overflowing sideways; NOVAMLX_SCREENSHOTS=DIR saves what the browser drew (docs/screenshots)."""
    p = Page(browser, viewport=DESKTOP if width == "desktop" else PHONE, locale=lang)
    try:
        pg = open_chat(p, ui)
        assert pg.evaluate("document.documentElement.lang") == lang
        send(pg, "SCRIPT:web_markdown")
        wait_reply_done(pg)
        assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        if width == "phone":
            assert pg.locator("#sidebar").bounding_box()["x"] < 0  # the sidebar waits behind the menu button
            pg.click("#menu")
            pg.wait_for_function("() => document.querySelector('#sidebar').getBoundingClientRect().x >= 0")
            shoot(pg, f"chat-{width}-{lang}-sidebar")
            pg.mouse.click(PHONE["width"] - 10, PHONE["height"] // 2)  # the backdrop beside the sidebar closes it
            pg.wait_for_function("() => document.querySelector('#sidebar').getBoundingClientRect().right <= 0")
        shoot(pg, f"chat-{width}-{lang}")
        dash = open_dashboard(p, ui)
        dash.wait_for_selector("#models tr[data-model]")
        dash.wait_for_selector("#cards .card")
        assert dash.evaluate("document.documentElement.lang") == lang
        if SHOTS:
            dash.screenshot(path=str(SHOTS / f"dashboard-{width}-{lang}.png"), full_page=True)
        assert p.errors == []
    finally:
        p.close()
