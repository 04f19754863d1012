"""The update check against a local releases server: newer, the same, unreachable; once a day."""
from __future__ import annotations

import asyncio
import time

import httpx

from novamlx_gateway.updates import UpdateCheck, version_key
from tests.conftest import Server, free_port
from tests.fixtures.fake_releases import FakeReleases


def test_version_order():
    assert version_key("v1.10.0") > version_key("1.9.2")
    assert version_key("1.0.0") > version_key("1.0.0rc1") > version_key("0.9")
    assert version_key("v0.1.0") == version_key("0.1")


def test_newer_same_and_unreachable(tmp_path):
    releases = FakeReleases("v9.0.0")
    try:
        newer = UpdateCheck(releases.url, tmp_path / "a.json", True, current="0.1.0")
        asyncio.run(newer.check())
        st = newer.state()
        assert st["available"] and st["latest"] == "9.0.0" and st["url"].endswith("v9.0.0") and not st["error"]
        releases.tag = "v0.1.0"
        same = UpdateCheck(releases.url, tmp_path / "b.json", True, current="0.1.0")
        asyncio.run(same.check())
        assert same.state()["available"] is False and same.state()["latest"] == "0.1.0"
    finally:
        releases.close()
    closed = f"http://127.0.0.1:{free_port()}/latest"
    offline = UpdateCheck(closed, tmp_path / "c.json", True, current="0.1.0")
    t0 = time.monotonic()
    asyncio.run(offline.check())
    st = offline.state()
    assert st["available"] is False and st["latest"] is None and "ConnectError" in st["error"]
    assert time.monotonic() - t0 < 10 and not offline.due()  # tried again tomorrow, not in a loop
    assert UpdateCheck(closed, tmp_path / "c.json", False).state() == {"enabled": False, "current": offline.current}


def test_the_server_checks_once_a_day_in_the_background(tiny_model, tmp_path):
    releases = FakeReleases("v9.0.0")
    try:
        args = ["--model", str(tiny_model), "--embedding-model", "none", "--update-check", "on", "--update-url", releases.url]
        s = Server(args, tmp_path).wait_ready()
        try:
            deadline = time.time() + 20
            while time.time() < deadline and not s.health()["update"].get("checked_at"):
                time.sleep(0.2)
            up = s.health()["update"]
            assert up["enabled"] and up["available"] and up["latest"] == "9.0.0", up
        finally:
            s.stop()
        assert releases.hits == 1
        s = Server(args, tmp_path).wait_ready()  # a restart within the day asks nobody: the answer is kept
        try:
            assert s.health()["update"]["available"] and releases.hits == 1
        finally:
            s.stop()
        off = Server(["--model", str(tiny_model), "--embedding-model", "none"], tmp_path / "off").wait_ready()
        try:
            assert off.health()["update"] == {"enabled": False, "current": off.health()["update"]["current"]}
            assert httpx.get(off.base_url + "/health").json()["update"]["enabled"] is False
        finally:
            off.stop()
        assert releases.hits == 1
    finally:
        releases.close()
