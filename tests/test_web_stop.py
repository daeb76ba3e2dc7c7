"""A stop (SIGTERM) while HTTP clients submit over kept-alive connections: as on the Unix
socket (test_stop_requests.py), every request is answered, refused with a 503 saying
nothing was done, or meets a closed connection before any reply; and a job that exists
after the restart was answered, never made behind a reset connection.

Why it matters: a script that sees a reset connection sends its POST again, and if the
first one's job was made anyway (its record written, then made durable by the stop's
snapshot), that is a duplicate nobody was warned of.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from phxqctl import Client
from phxqd import server
from phxqd.web import api, listen
from phxqd.web.drain import REFUSAL, Drain
from phxqd.web.server import WebServer
from tests.conftest import Daemon
from tests.test_stop_requests import Outcomes, check_restart
from tests.web_helpers import free_port

#: client threads submitting at once, each on its own kept-alive connection
CLIENTS = 4
#: replies received before SIGTERM is sent (so requests are surely in flight)
BEFORE_STOP = 60
#: the stop's grace for requests in flight: far more than they need, so none is cut off
#: and an event stream waited for would show (the stop would take this long)
GRACE = 20.0


def submit_until_stopped(port: int, token: str, name: str, out: Outcomes) -> None:
    """POST one job per request on one connection until phxqd stops answering."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    n = 0
    try:
        while True:
            tag = f"{name}-{n}"
            n += 1
            body = json.dumps({"jobs": [{"argv": ["true", tag]}]})
            try:
                conn.request("POST", "/api/v1/jobs", body, headers)
                r = conn.getresponse()
                status, data = r.status, r.read()
            except (ConnectionError, http.client.RemoteDisconnected) as e:
                with out.lock:
                    out.warned[tag] = repr(e)  # the connection closed, no reply
                return
            except Exception as e:
                with out.lock:
                    out.unclear[tag] = repr(e)
                return
            with out.lock:
                if 200 <= status < 300:
                    out.replied.add(tag)
                    if len(out.replied) >= BEFORE_STOP:
                        out.enough.set()
                    continue
                said = f"{status} {data!r} connection: {r.getheader('connection')}"
                error = json.loads(data).get("error", {}) if data.startswith(b"{") else {}
                stopping = error == {"code": "refused", "message": server.STOPPING.message}
                if status == 503 and stopping and r.getheader("connection") == "close":
                    out.refused[tag] = said
                else:
                    out.unclear[tag] = said
                return
    finally:
        conn.close()


def follow_events(port: int, ready: threading.Event, ended: threading.Event) -> None:
    """An event stream open through the stop: it must be ended, properly (its chunked
    body closed: `read` raises IncompleteRead on a cut one), not cut or waited for."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", "/api/v1/events")
        r = conn.getresponse()
        assert r.status == 200
        assert r.readline() == b"event: ready\n"
        ready.set()
        r.read()
        ended.set()
    finally:
        conn.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_stop_under_http_submits_answers_each_or_refuses_it(tmp_path: Path, loop: str) -> None:
    port = free_port()
    daemon = Daemon(tmp_path)
    daemon.config.write_text(
        f'event_loop = "{loop}"\nhttp_listen = "127.0.0.1:{port}"\n'
        f"http_submit = true\nkill_grace = {GRACE}\n"
    )
    daemon.start()
    daemon.ok("pause")  # the jobs stay pending: what was made is what is there after
    token = json.loads((daemon.state_dir / "http-tokens").read_text())["control"]
    stream_ready, stream_ended = threading.Event(), threading.Event()
    stream = threading.Thread(target=follow_events, args=(port, stream_ready, stream_ended))
    stream.start()
    assert stream_ready.wait(60), "the event stream did not start"
    out = Outcomes()
    threads = [
        threading.Thread(target=submit_until_stopped, args=(port, token, f"c{i}", out))
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    assert out.enough.wait(60), "the clients' submits were not answered"
    began = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=GRACE + 60) == 0, daemon.logtext()
    took = time.monotonic() - began
    for t in [*threads, stream]:
        t.join(60)
        assert not t.is_alive()
    assert stream_ended.is_set()
    assert "Traceback" not in daemon.logtext()
    # a stream is not waited for, and the submits need a fraction of the grace
    assert took < GRACE, f"the stop took {took:.1f}s: it waited for the event stream"

    daemon.start()
    with Client(daemon.socket, timeout=60) as client:
        made = {job.argv[1] for job in client.list(limit=1_000_000)}
    report = check_restart(out, made)
    # With the grace this long, nothing in flight is cut off: a request either got in
    # before the stop (answered) or was refused or never taken (nothing done).
    assert made == out.replied, "jobs made behind a closed connection: " + report


# ------------------------------------------------- the HTTP server's stop, step by step
#
# WebServer and Drain on a real TCP socket, real HTTP clients (in threads), with a small
# Starlette app standing in for phxqd's (its requests are answered too fast to be caught
# in the middle): POST /held is answered once the test lets it go, /stream is an event
# stream that never ends.


class Held:
    def __init__(self) -> None:
        self.handling = anyio.Event()
        self.release = anyio.Event()
        self.ended = anyio.Event()
        self.app = Starlette(
            routes=[
                Route("/held", self.held, methods=["POST"]),
                Route("/quick", self.quick),
                Route("/stream", self.stream),
            ]
        )

    async def held(self, request: Request) -> Response:
        self.handling.set()
        try:
            await self.release.wait()
        finally:
            self.ended.set()
        return JSONResponse({"made": True})

    async def quick(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def stream(self, request: Request) -> Response:
        async def forever() -> AsyncIterator[bytes]:
            yield b"event: ready\ndata: {}\n\n"
            await anyio.sleep_forever()

        return api.stream(forever())


def web_server(held: Held) -> tuple[WebServer, Drain, int]:
    sock = listen.bind(listen.parse("127.0.0.1:0"))
    drain = Drain(held.app)
    return WebServer(drain, sock, drain), drain, sock.getsockname()[1]


def ask(conn: http.client.HTTPConnection, method: str, url: str) -> tuple[int, Any, str | None]:
    """(status, JSON body, Connection header) of one request on `conn`."""
    conn.request(method, url)
    r = conn.getresponse()
    return r.status, json.loads(r.read()), r.getheader("connection")


def read_stream(conn: http.client.HTTPConnection) -> bytes:
    """Everything a stream sends until it ends (http.client checks the chunked ending)."""
    conn.request("GET", "/stream")
    r = conn.getresponse()
    return r.read()


def test_an_http_stop_answers_the_request_in_flight_and_refuses_those_that_come() -> None:
    async def main() -> None:
        held = Held()
        web, drain, port = web_server(held)
        replies: dict[str, Any] = {}

        def connection() -> http.client.HTTPConnection:
            return http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        async def in_thread(name: str, call: Callable[[], Any]) -> None:
            replies[name] = await anyio.to_thread.run_sync(call)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(web.run)
                idle, submitter, streamer = connection(), connection(), connection()
                tg.start_soon(in_thread, "stream", lambda: read_stream(streamer))
                tg.start_soon(in_thread, "held", lambda: ask(submitter, "POST", "/held"))
                await held.handling.wait()
                while not any(r.streaming for r in drain.live):
                    await anyio.sleep(0.01)  # the stream has begun
                # kept alive, idle (last: uvicorn closes one idle for 5 s)
                answer = await anyio.to_thread.run_sync(ask, idle, "GET", "/quick")
                assert answer == (200, {"ok": True}, None)
                stopped = anyio.Event()

                async def stop() -> None:
                    await web.stop(60.0)
                    stopped.set()

                tg.start_soon(stop)
                await anyio.wait_all_tasks_blocked()  # the stop waits for /held
                refused = await anyio.to_thread.run_sync(ask, idle, "GET", "/quick")
                assert refused == (503, REFUSAL, "close")
                with pytest.raises(ConnectionRefusedError):  # no new connection
                    await anyio.to_thread.run_sync(lambda: connection().connect())
                assert not stopped.is_set()
                held.release.set()
            assert replies["held"] == (200, {"made": True}, None)
            assert replies["stream"] == b"event: ready\ndata: {}\n\n"  # ended, not cut

    anyio.run(main)


def test_a_request_that_never_ends_holds_the_http_stop_only_for_the_grace() -> None:
    async def main() -> None:
        held = Held()
        web, _, port = web_server(held)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(web.run)
                submitter = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

                async def submit() -> None:
                    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
                        await anyio.to_thread.run_sync(ask, submitter, "POST", "/held")

                tg.start_soon(submit)
                await held.handling.wait()
                await web.stop(0.2)  # held.release is never set
                await held.ended.wait()  # cancelled, not left running

    anyio.run(main)
