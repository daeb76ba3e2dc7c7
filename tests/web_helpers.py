"""What the web tests share: a phxqd with `http_listen`, and a small HTTP client (the
standard library's http.client, over TCP or a Unix socket) that reads JSON answers and
Server-Sent Events."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import Daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> tuple[str, str]:
        e = self.json()["error"]
        return e["code"], e["message"]


class Http:
    """One server: `port` on 127.0.0.1, or a Unix socket `path`."""

    def __init__(self, port: int | None = None, path: str | None = None) -> None:
        self.port = port
        self.path = path
        self.token: str | None = None

    def connection(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        if self.path is not None:
            return UnixConnection(self.path, timeout)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> Answer:
        headers = dict(headers or {})
        if token or self.token:
            headers["Authorization"] = f"Bearer {token or self.token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn = self.connection()
        try:
            conn.request(method, url, data, headers)
            r = conn.getresponse()
            return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def get(self, url: str, **kw: Any) -> Answer:
        return self.request("GET", url, **kw)

    def post(self, url: str, body: Any = None, **kw: Any) -> Answer:
        return self.request("POST", url, body if body is not None else {}, **kw)

    def ok(self, method: str, url: str, body: Any = None) -> Any:
        a = self.request(method, url, body)
        assert a.status == 200, f"{method} {url} -> {a.status} {a.body!r}"
        return a.json()

    def events(self, url: str, timeout: float = 30.0) -> Iterator[tuple[str, Any]]:
        """(event name, data) of an SSE stream, as they come; comments are skipped."""
        conn = self.connection(timeout)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        conn.request("GET", url, headers=headers)
        r = conn.getresponse()
        assert r.status == 200, r.read()
        assert r.getheader("content-type", "").startswith("text/event-stream")
        try:
            name, data = "message", ""
            while True:
                line = r.readline()
                if not line:
                    return
                text = line.decode().rstrip("\n")
                if text.startswith(":"):
                    continue
                if text.startswith("event: "):
                    name = text[7:]
                elif text.startswith("data: "):
                    data += text[6:]
                elif text == "" and (data or name != "message"):
                    yield name, json.loads(data or "null")
                    name, data = "message", ""
        finally:
            conn.close()


def make_browser(chromium: str, chromedriver: str) -> Any:
    """Headless Chromium through Debian's chromedriver (never Selenium Manager), with the
    flags a root, offline machine needs and a fresh profile."""
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="phxq-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(30)
    return driver


def web_daemon(tmp: Path, listen: str, extra: str = "", workers: int = 2) -> Daemon:
    d = Daemon(tmp, workers=workers)
    d.config.write_text(f"http_listen = {json.dumps(listen)}\n{extra}")
    return d.start()
