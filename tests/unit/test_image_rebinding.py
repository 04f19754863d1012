"""A DNS answer that changes between the address check and the connection (rebinding) never
reaches loopback: the fetch connects to the address that was checked."""
import asyncio
import http.server
import socket
import threading

import pytest

from novamlx_gateway import images
from novamlx_gateway.config import Config
from novamlx_gateway.errors import APIError


def test_rebinding_resolver_never_reaches_loopback(monkeypatch, tmp_path):
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"secret")

        def log_message(self, *a):
            pass

    local = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=local.serve_forever, daemon=True).start()
    port = local.server_address[1]
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1", "127.0.0.1"])  # public first, then loopback
    real = asyncio.BaseEventLoop.getaddrinfo

    async def rebinding(self, host, *args, **kw):
        if host == "rebind.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return await real(self, host, *args, **kw)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", rebinding)
    orig = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: orig("127.0.0.1" if host == "rebind.test" else host, *a, **k))
    cfg = Config(data_dir=str(tmp_path), image_fetch_timeout=2)
    try:
        with pytest.raises((APIError, Exception)):
            asyncio.run(images._fetch_url(f"http://rebind.test:{port}/img.png", cfg))
        assert hits == []  # the loopback server was never reached
    finally:
        local.shutdown()


def test_pinned_url_keeps_the_name_for_host_and_tls():
    url, headers, ext = images._pinned("https://img.example:8443/a.png?x=1", "93.184.216.34")
    assert url == "https://93.184.216.34:8443/a.png?x=1"
    assert headers == {"host": "img.example:8443"} and ext == {"sni_hostname": "img.example"}
    assert images._pinned("http://h/a.png", "2606:2800::1")[0] == "http://[2606:2800::1]/a.png"
    assert images._pinned("http://h/a.png", None) == ("http://h/a.png", {}, {})
