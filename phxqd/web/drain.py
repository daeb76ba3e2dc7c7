"""The HTTP side of phxqd's graceful stop, as the Unix socket's (phxqd/server.py,
`_drain`): the requests being handled are answered, for up to `kill_grace` seconds; a
request that comes meanwhile is refused (503, `refused`, "phxqd is stopping ... nothing
was done"); event streams are ended at once, not waited for.

Why not uvicorn's own graceful shutdown: it closes idle kept-alive connections at once,
so a request sent on one meets a closed connection instead of being told nothing was
done; it waits for every response, event streams included, which may never end; and its
time limit is fixed when the server is built, while `kill_grace` is read at the stop (a
reload may have changed it). So the requests are drained here first, and uvicorn's
shutdown, run after, finds only idle connections to close.
"""

from __future__ import annotations

from typing import Any

import anyio

from phxqd.server import DRAIN_INTERVAL, STOPPING
from phxqd.web.api import json_response

#: the answer to a request that comes once phxqd has begun to stop
REFUSAL = {"error": {"code": "refused", "message": STOPPING.message}}


class InFlight:
    """One request being handled: its scope (cancelled to end a stream), and how far its
    response went."""

    __slots__ = ("complete", "scope", "started", "streaming")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.started = False
        self.complete = False
        #: its response is an event stream (SSE): a stop ends it rather than waits for it
        self.streaming = False


class Drain:
    """ASGI middleware: knows the requests in flight, and refuses new ones once `stop`
    was called."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.live: set[InFlight] = set()
        self.stopping = False
        #: the grace ran out: the requests left were cancelled, their connections cut
        self.cut = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.stopping:
            await refuse(scope, receive, send)
            return
        request = InFlight()

        async def tracked(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                request.streaming = stream
                if stream and self.stopping:
                    request.scope.cancel()  # begun during the drain: ended at once
            await send(message)
            if message["type"] == "http.response.start":
                request.started = True
            elif not message.get("more_body", False):
                request.complete = True

        self.live.add(request)
        try:
            with request.scope:
                await self.app(scope, receive, tracked)
        finally:
            self.live.discard(request)
        if request.scope.cancelled_caught and not self.cut:
            if not request.started:
                await refuse(scope, receive, send)
            elif not request.complete:  # a stream ended by the stop: end its body cleanly
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def stop(self, grace: float) -> bool:
        """Refuse new requests, end the event streams, and wait up to `grace` seconds for
        the other requests in flight to be answered: True if they were.

        Why wait: a change (a submit...) whose record was written when its connection was
        closed is made anyway (the stop's snapshot makes it durable), and its client,
        told nothing, would send it again. A look every DRAIN_INTERVAL, as the socket's
        drain: the stop pays for it, not every request.
        """
        self.stopping = True
        for request in self.live:
            if request.streaming:
                request.scope.cancel()
        with anyio.move_on_after(grace):
            while any(not r.streaming for r in self.live):
                await anyio.sleep(DRAIN_INTERVAL)
            return True
        return False

    def cut_off(self) -> None:
        """The grace ran out, and the connections were cut: the requests still in flight
        are cancelled, as the socket's are, rather than left to run on unanswered."""
        self.cut = True
        for request in self.live:
            request.scope.cancel()


async def refuse(scope: Any, receive: Any, send: Any) -> None:
    """Say phxqd is stopping, nothing done, and close the connection after."""
    response = json_response(REFUSAL, 503)
    response.headers["connection"] = "close"
    await response(scope, receive, send)
