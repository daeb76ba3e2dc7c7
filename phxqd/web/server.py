"""uvicorn, run as one task of phxqd's event loop (no thread, no process of its own).

uvicorn's `Server.serve` would install its own SIGINT/SIGTERM handlers; phxqd owns its
signals (graceful stop, reload), so the subclass below leaves them alone. Logging is
phxqd's too (`log_config=None`), and there are no access logs.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import uvicorn


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        """uvicorn's housekeeping (the Date header's clock, the exit flag) once a second
        instead of ten times: an idle phxqd serving HTTP stays idle. `stop` is seen within
        a second, and phxqd's shutdown cancels this task anyway."""
        counter = 0  # on_tick refreshes the Date header when counter % 10 == 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            await anyio.sleep(1.0)


class WebServer:
    def __init__(self, app: Any, sock: socket.socket) -> None:
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
        self.scope = anyio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            await self._server.serve(sockets=[self._sock])

    def stop(self) -> None:
        """No new connections; open ones (event streams) are not waited for."""
        self._server.should_exit = True
        self._server.force_exit = True
