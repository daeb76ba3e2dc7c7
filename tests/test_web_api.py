"""The HTTP API against a real phxqd subprocess, through a real HTTP client: every
endpoint, every error code, tokens refused and accepted, CSRF, keyset pages."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, until
from tests.web_helpers import Http, free_port, web_daemon


@pytest.fixture
def web(tmp_path: Path) -> tuple[Daemon, Http]:
    port = free_port()
    d = web_daemon(tmp_path, f"127.0.0.1:{port}", "http_submit = true\n")
    return d, Http(port)


def token(d: Daemon, *flags: str) -> str:
    """A token by `phxqd http-token` (with flags), or read from its file (quicker)."""
    if not flags:
        return str(json.loads((d.state_dir / "http-tokens").read_text())["control"])
    r = subprocess.run(
        [sys.executable, "-m", "phxqd", "http-token", *flags],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def read_token(d: Daemon) -> str:
    return str(json.loads((d.state_dir / "http-tokens").read_text())["read"])


def test_without_http_listen_phxqd_never_imports_the_web_stack(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.env["PYTHONPROFILEIMPORTTIME"] = "1"  # every import, when it happens, on stderr
    d.start()
    d.ok("wait", str(d.submit("true")))
    d.ok("metrics")
    d.ok("status")
    assert d.stop() == 0
    imported = set(re.findall(r"^import time:.*\|\s+([\w.]+)$", d.logtext(), re.MULTILINE))
    assert "phxqd.dispatcher" in imported  # the import log is there...
    assert not {m.split(".")[0] for m in imported} & {"starlette", "uvicorn", "jinja2"}
    assert "phxqd.web" not in imported  # ...and names none of these


def test_reading(web: tuple[Daemon, Http]) -> None:
    d, h = web
    done = d.submit("sh", "-c", "echo one; echo two", opts=("--label", "L", "--key", "K"))
    d.ok("wait", str(done))
    status = h.ok("GET", "/api/v1/status")
    assert status == d.json("status") | {"uptime": status["uptime"]}
    queues = h.ok("GET", "/api/v1/queues")
    assert [q["queue"] for q in queues] == ["default"]
    assert queues[0]["counts"]["completed"] == 1
    assert set(queues[0]) >= {"throughput_per_minute", "eta_seconds", "paused", "concurrency"}
    assert h.ok("GET", f"/api/v1/jobs/{done}") == d.job(done)
    page = h.ok("GET", "/api/v1/jobs?status=completed&queue=default&label=L&key=K")
    assert [j["id"] for j in page["jobs"]] == [done] and page["next"] is None
    assert h.ok("GET", "/api/v1/jobs?label=nope")["jobs"] == []
    log = h.ok("GET", f"/api/v1/jobs/{done}/log")
    assert log == {"id": done, "data": "one\ntwo\n", "offset": 8, "size": 8, "finished": True}
    assert h.ok("GET", f"/api/v1/jobs/{done}/log?tail=4")["data"] == "two\n"
    assert h.ok("GET", f"/api/v1/jobs/{done}/log?offset=4&limit=2")["data"] == "tw"
    health = h.ok("GET", "/health")
    assert health["ok"] is True and health["writable"] is True and health["uptime"] > 0
    assert h.ok("GET", "/api/v1/health")["ok"] is True
    metrics = h.get("/metrics")
    assert metrics.status == 200
    assert b'phxq_jobs_total{event="completed",queue="default"} 1.0' in metrics.body
    doc = h.ok("GET", "/api/v1/openapi.json")
    assert doc["openapi"].startswith("3.")
    assert "Job" in doc["components"]["schemas"]
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(m, r.path) for r in api_routes() for m in (r.methods or ()) if m != "HEAD"}
    assert {s for s in served if s[1].startswith("/api/v1/")} == documented | {
        ("GET", "/api/v1/openapi.json")
    }


def api_routes() -> list[Any]:
    from starlette.routing import Route

    from phxqd.web.api import Api

    class Fake:  # only the route table is read
        core = None

    return [r for r in Api(Fake()).routes() if isinstance(r, Route)]  # type: ignore[arg-type]


def test_changing(web: tuple[Daemon, Http]) -> None:
    d, h = web
    # pause and resume one queue, then all
    assert h.ok("POST", "/api/v1/queues/q/pause")["paused"] == ["q"]
    queued = d.submit("true", opts=("--queue", "q"))
    assert d.job(queued)["status"] == "pending"
    assert h.ok("POST", "/api/v1/queues/q/resume")["paused"] == []
    d.ok("wait", str(queued))
    assert h.ok("POST", "/api/v1/pause")["paused_all"] is True
    assert h.ok("POST", "/api/v1/resume")["paused_all"] is False
    # concurrency
    infos = h.ok("PUT", "/api/v1/queues/q/concurrency", {"concurrency": 3})
    assert [(q["queue"], q["concurrency"], q["concurrency_from"]) for q in infos] == [
        ("q", 3, "runtime")
    ]
    assert (
        h.ok("PUT", "/api/v1/queues/q/concurrency", {"concurrency": None})[0]["concurrency"] is None
    )
    # cancel one, cancel many
    a = d.submit("sleep", "60")
    b, c = d.submit("sleep", "60"), d.submit("sleep", "60")
    until(lambda: d.job(a)["status"] == "running", what="job a running")
    assert h.ok("POST", f"/api/v1/jobs/{a}/cancel")["status"] == "cancelled"
    cancelled = h.ok("POST", "/api/v1/cancel", {"ids": [b, c]})
    assert [j["status"] for j in cancelled] == ["cancelled", "cancelled"]
    # retry one, retry many, retry-failed (paused: the retried jobs stay pending)
    h.ok("POST", "/api/v1/pause")
    assert h.ok("POST", f"/api/v1/jobs/{a}/retry")["status"] == "pending"
    assert [j["status"] for j in h.ok("POST", "/api/v1/retry", {"ids": [b]})] == ["pending"]
    h.ok("POST", "/api/v1/cancel", {"ids": [a, b]})
    h.ok("POST", "/api/v1/resume")
    failed = d.submit("false", opts=("--retries", "0", "--queue", "f"))
    d.ctl("wait", str(failed))
    assert h.ok("POST", "/api/v1/retry-failed", {"queue": "other"}) == {"retried": 0}
    assert h.ok("POST", "/api/v1/retry-failed", {"queue": "f"}) == {"retried": 1}
    d.ctl("wait", str(failed))
    # clear
    assert h.ok("POST", "/api/v1/clear", {"status": "failed"}) == {"cleared": 1}
    assert h.get(f"/api/v1/jobs/{failed}").status == 404
    assert h.ok("POST", "/api/v1/clear")["cleared"] >= 3


def test_submit_needs_http_submit_and_the_control_token(web: tuple[Daemon, Http]) -> None:
    d, h = web
    spec = {"jobs": [{"argv": ["echo", "hi"], "label": "web"}]}
    assert h.post("/api/v1/jobs", spec).error[0] == "unauthorized"  # loopback is not enough
    assert h.post("/api/v1/jobs", spec, token=read_token(d)).error[0] == "forbidden"
    a = h.post("/api/v1/jobs", spec, token=token(d))
    assert a.status == 200
    [result] = a.json()
    assert result["deduplicated"] is False
    d.ok("wait", str(result["job"]["id"]))
    assert d.job(result["job"]["id"])["label"] == "web"
    bad = h.post("/api/v1/jobs", {"jobs": [{"argv": []}]}, token=token(d))
    assert bad.status == 400 and bad.error[0] == "usage"


def test_submit_is_off_by_default(tmp_path: Path) -> None:
    port = free_port()
    d = web_daemon(tmp_path, f"127.0.0.1:{port}")
    a = Http(port).post("/api/v1/jobs", {"jobs": [{"argv": ["true"]}]}, token=token(d))
    assert a.status == 403
    assert a.error == ("forbidden", "submitting over HTTP is off (http_submit = false)")


def test_errors_carry_phxqctls_codes_and_messages(web: tuple[Daemon, Http]) -> None:
    d, h = web
    done = d.submit("true")
    d.ok("wait", str(done))

    def cli_message(*args: str) -> str:
        r = d.ctl(*args)
        return r.stderr.strip().removeprefix("phxqctl: ")

    a = h.get("/api/v1/jobs/999")
    assert (a.status, a.error) == (404, ("not_found", cli_message("show", "999")))
    a = h.post(f"/api/v1/jobs/{done}/retry")
    assert (a.status, a.error) == (409, ("refused", cli_message("retry", str(done))))
    a = h.get("/api/v1/jobs?status=bogus")
    assert (a.status, a.error[0]) == (400, "usage")
    assert a.error[1].startswith("unknown status 'bogus': one of pending, running")
    assert h.get("/api/v1/jobs/abc").error == ("usage", "job id must be an integer, not 'abc'")
    assert h.get("/api/v1/jobs?limit=0").status == 400
    assert h.get("/api/v1/jobs?before=x").status == 400
    assert h.request("POST", "/api/v1/cancel", b"{not json").error[0] == "usage"
    assert h.request("POST", "/api/v1/cancel", {"ids": [1], "x": 1}).status == 400
    assert h.get("/api/v1/jobs/999/log").status == 404
    a = h.request("DELETE", "/api/v1/status")
    assert (a.status, a.error[0]) == (405, "usage")
    assert h.get("/api/v1/nothing").error[0] == "not_found"
    a = h.post("/api/v1/clear", {"status": "running"})
    assert (a.status, a.error[0]) == (400, "usage")


def test_event_stream_and_log_follow(web: tuple[Daemon, Http]) -> None:
    d, h = web
    got: list[dict[str, Any]] = []

    stream = h.events("/api/v1/events")
    assert next(stream) == ("ready", {})  # phxqd listens from here on

    def read() -> None:
        for name, event in stream:
            assert name == "message"
            got.append(event)
            if event["event"] == "completed":
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ctl = f"{sys.executable} -m phxqctl"
    job = d.submit("sh", "-c", f"echo a; {ctl} progress --percent 50 --step half; echo b")
    reader.join(30)
    stream.close()  # the page goes: phxqd's listener goes with it
    until(
        lambda: "phxq_event_listeners 0.0" in h.get("/metrics").body.decode(),
        what="the stream's listener detached",
    )
    assert [e["event"] for e in got] == ["submitted", "started", "progress", "completed"]
    assert got[2]["progress"]["step"] == "half" and got[2]["id"] == job
    watched = json.loads(d.ok("--json", "show", str(job)))
    assert got[-1]["status"] == watched["status"] == "completed"
    assert "type" not in got[0]  # as phxqctl watch --json prints them
    chunks = list(h.events(f"/api/v1/jobs/{job}/log/follow"))
    assert "".join(c["data"] for _, c in chunks) == "a\nb\n"
    assert chunks[-1][0] == "end"
    assert h.get("/api/v1/events?ids=abc").status == 400
    assert h.get("/api/v1/events?ids=999").status == 404


def test_a_followed_log_grows_live(web: tuple[Daemon, Http]) -> None:
    d, h = web
    gate = d.tmp / "gate"
    job = d.submit("sh", "-c", f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo last")
    until(lambda: d.job(job)["status"] == "running", what="running")
    stream = h.events(f"/api/v1/jobs/{job}/log/follow")
    assert next(stream) == ("chunk", {"data": "first\n", "offset": 6})
    gate.touch()
    rest = list(stream)
    assert rest[0] == ("chunk", {"data": "last\n", "offset": 11})
    assert rest[-1] == ("end", {"data": "", "offset": 11})


def test_tokens_on_a_unix_socket(tmp_path: Path) -> None:
    """Anything but loopback needs a token (here a socket for a reverse proxy)."""
    path = str(tmp_path / "http.sock")
    d = web_daemon(tmp_path, path, "http_submit = true\n")
    h = Http(path=path)
    tokens_file = d.state_dir / "http-tokens"
    assert stat.S_IMODE(os.stat(tokens_file).st_mode) == 0o600
    a = h.get("/api/v1/status")
    assert (a.status, a.error[0]) == (401, "unauthorized")
    assert h.get("/health").status == 200  # load balancers need no token
    assert h.get("/api/v1/status", token="wrong").status == 401
    assert h.get("/api/v1/status", headers={"Authorization": "Basic eDp5"}).status == 401
    read, control = token(d, "--read"), token(d)
    assert read != control
    assert (
        control
        == subprocess.run(
            [sys.executable, "-m", "phxqd", "http-token"], env=d.env, capture_output=True, text=True
        ).stdout.strip()
    )
    assert h.get("/api/v1/status", token=read).status == 200
    assert h.get("/metrics", token=read).status == 200
    a = h.post("/api/v1/pause", token=read)
    assert (a.status, a.error) == (403, ("forbidden", "this token may only read"))
    assert h.post("/api/v1/pause", token=control).status == 200
    assert h.post("/api/v1/jobs", {"jobs": [{"argv": ["true"]}]}, token=control).status == 200
    # rotation takes effect at once, without a restart
    new = token(d, "--rotate")
    assert new != control
    assert h.get("/api/v1/status", token=control).status == 401
    assert h.get("/api/v1/status", token=new).status == 200
    assert h.get("/api/v1/status", token=read).status == 200  # the other kind is kept
    # the dashboard sends a visitor without a session to the login page
    page = h.get("/")
    assert page.status == 303 and page.headers["location"] == "/login"
    stale = h.get("/", headers={"Cookie": "phxq_session=gone"})
    assert stale.status == 303 and stale.headers["location"] == "/login"
    assert h.get("/login").status == 200
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert h.request("POST", "/login", b"token=wrong", headers=form).status == 401
    for kind, tok in (("read", read), ("control", new)):
        a = h.request("POST", "/login", f"token={tok}".encode(), headers=form)
        assert a.status == 303 and a.headers["location"] == "/"
        session = {"Cookie": a.headers["set-cookie"].split(";")[0]}
        page = h.get("/", headers=session)
        assert page.status == 200
        assert (b'data-action="resume"' in page.body) == (kind == "control")
        assert h.get("/api/v1/status", headers=session).status == 200


def test_cross_site_requests_are_refused(web: tuple[Daemon, Http]) -> None:
    d, h = web
    done = d.submit("false", opts=("--retries", "0"))
    d.ctl("wait", str(done))
    url = f"/api/v1/jobs/{done}/retry"
    evil = {"Origin": "http://evil.example"}
    assert h.post(url, headers=evil).error == ("forbidden", "cross-site request refused")
    site = {"Sec-Fetch-Site": "cross-site"}
    assert h.post(url, headers=site).error == ("forbidden", "cross-site request refused")
    rebound = {"Host": "evil.example:80"}
    assert h.get("/api/v1/status", headers=rebound).error[0] == "forbidden"
    # the dashboard's session: its CSRF token is needed to change anything
    page = h.get("/")
    assert page.status == 200
    for header in ("content-security-policy", "x-frame-options", "x-content-type-options"):
        assert header in page.headers
    cookie = page.headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in page.headers["set-cookie"]
    assert "SameSite=strict" in page.headers["set-cookie"]
    csrf = page.body.decode().split('name="csrf-token" content="')[1].split('"')[0]
    own = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{h.port}"}
    a = h.post(url, headers=own)
    assert a.error == ("forbidden", "missing or wrong X-CSRF-Token")
    assert h.post(url, headers=own | {"X-CSRF-Token": "x" + csrf}).status == 403
    assert h.post(url, headers=own | {"X-CSRF-Token": csrf}).status == 200
    # a bearer token is no ambient credential: no CSRF token, any origin
    d.ctl("wait", str(done))
    assert h.post(url, headers=evil, token=token(d)).status == 200


def test_pages_of_100000_jobs(tmp_path: Path) -> None:
    """Keyset pages over 100,000 jobs: every job exactly once, newest first. (Submitted
    over HTTP in batches of 10,000, about 2 s here; the pages take about as long.)"""
    port = free_port()
    d = web_daemon(tmp_path, f"127.0.0.1:{port}", 'fsync = "off"\nhttp_submit = true\n')
    h = Http(port)
    h.token = token(d)
    h.ok("POST", "/api/v1/pause")
    n, batch = 100_000, 10_000
    for start in range(0, n, batch):
        specs = [
            {"argv": ["true"], **({"label": "rare"} if i % 10_000 == 0 else {})}
            for i in range(start, start + batch)
        ]
        h.ok("POST", "/api/v1/jobs", {"jobs": specs})
    seen: list[int] = []
    before = None
    while True:
        url = "/api/v1/jobs?limit=1000" + (f"&before={before}" if before else "")
        page = h.ok("GET", url)
        seen += [j["id"] for j in page["jobs"]]
        before = page["next"]
        if before is None:
            break
    assert seen == list(range(n, 0, -1))
    rare = h.ok("GET", "/api/v1/jobs?label=rare&limit=5")
    assert [j["id"] for j in rare["jobs"]] == [90_001, 80_001, 70_001, 60_001, 50_001]
    rest = h.ok("GET", f"/api/v1/jobs?label=rare&limit=5&before={rare['next']}")
    assert [j["id"] for j in rest["jobs"]] == [40_001, 30_001, 20_001, 10_001, 1]
    assert rest["next"] is None


def test_a_bad_address_is_one_clear_line(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.config.write_text('http_listen = "nowhere"\n')
    r = subprocess.run(
        [sys.executable, "-m", "phxqd", "check-config"], env=d.env, capture_output=True, text=True
    )
    assert r.returncode == 1
    assert "`http_listen`: 'nowhere' is not HOST:PORT or a Unix socket path" in r.stderr
    # a port that is taken: phxqd says so and does not start
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d.config.write_text(f'http_listen = "127.0.0.1:{port}"\n')
        d.start(expect_ready=False)
        assert d.proc is not None and d.wait(30) == 1
    assert f"phxqd: http_listen 127.0.0.1:{port}: [Errno 98] Address already in use" in (
        d.logtext()
    )
    assert "Traceback" not in d.logtext()


MALFORMED_HTTP = [
    b"\x00\xff\xfe garbage\r\n\r\n",
    b"GET /api/v1/status HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /api/v1/jobs/1/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99\r\n\r\n{",
    b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /api/v1/jobs?limit=-1&before=%ff%00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /api/v1/jobs/99999999999999999999999 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /api/v1/queues/%00/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
    b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED_HTTP, ids=range(len(MALFORMED_HTTP)))
def test_the_daemon_survives_malformed_http(web: tuple[Daemon, Http], raw: bytes) -> None:
    """Bytes no client should send: an error status (or a closed connection), never a
    5xx from phxq's own code, and the daemon answers the next request as before."""
    d, h = web
    with socket.create_connection(("127.0.0.1", h.port or 0), timeout=30) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500 or status in (200, 505), answer[:200]
    assert h.ok("GET", "/api/v1/status")["total"] == 0
    assert d.proc is not None and d.proc.poll() is None
    assert "Traceback" not in d.logtext()
