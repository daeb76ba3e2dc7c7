"""uvicorn, run as one task of phxqd's event loop (no thread, no process of its own).

uvicorn's `Server.serve` would install its own SIGINT/SIGTERM handlers; phxqd owns its
signals (graceful stop, reload), so the subclass below leaves them alone. Logging is
phxqd's too (`log_config=None`), and there are no access logs. A stop is phxqd's graceful
stop, as on the Unix socket (`WebServer.stop`, drain.py), not uvicorn's own.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import uvicorn

from phxqd.web.drain import Drain


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        #: set with `should_exit`, so the exit flag is seen at once, not at the next tick
        self.exiting = anyio.Event()

    async def main_loop(self) -> None:
        """uvicorn's housekeeping (the Date header's clock, the exit flag) once a second
        instead of ten times: an idle phxqd serving HTTP stays idle."""
        counter = 0  # on_tick refreshes the Date header when counter % 10 == 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            with anyio.move_on_after(1.0):
                await self.exiting.wait()


class WebServer:
    """uvicorn serving `app` on `sock`; `drain`, the middleware in `app` that knows the
    requests in flight, lets it stop as the Unix socket does (`stop`)."""

    def __init__(self, app: Any, sock: socket.socket, drain: Drain) -> None:
        config = uvicorn.Config(
            app,
            # httptools (llhttp), not h11: on a malformed chunked body h11's state machine
            # raised inside uvicorn (a traceback in phxqd's log); httptools answers 400
            http="httptools",
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        # its start and stop lines say nothing phxqd's own log does not; errors still show
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _Server(config)
        self._sock = sock
        self._drain = drain
        self._finished = anyio.Event()

    async def run(self) -> None:
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            self._finished.set()

    async def stop(self, grace: float) -> None:
        """No connection accepted from now on (one in the listen backlog is reset); the
        requests being handled answered for up to `grace` seconds while newcomers are
        refused and event streams end (drain.py); then every connection closed, and
        return once uvicorn has ended. Cut short only once the grace has run out: then
        the connections of requests still unanswered are cut, their clients told
        nothing, and the requests cancelled (as on the Unix socket)."""
        server = self._server
        for listener in getattr(server, "servers", []):  # none before uvicorn started
            listener.close()
        force = not await self._drain.stop(grace)
        if force:
            for connection in list(server.server_state.connections):
                connection.transport.abort()
            self._drain.cut_off()
        server.should_exit = True
        server.force_exit = force
        server.exiting.set()
        await self._finished.wait()
