"""The HTTP front put together: the API (api.py), the dashboard (dashboard.py), who may do
what (security.py), served by uvicorn as a task of phxqd's loop (server.py)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Literal

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from phxqd.protocol import Refused
from phxqd.web import listen
from phxqd.web.api import Api, ApiError, error_response, json_response
from phxqd.web.dashboard import Dashboard
from phxqd.web.drain import Drain
from phxqd.web.rates import PERIOD, Rates
from phxqd.web.security import SAFE_METHODS, Guard, SecurityHeaders, Who
from phxqd.web.server import WebServer
from phxqd.web.tokens import Tokens

if TYPE_CHECKING:
    from phxqd.core import Core

log = logging.getLogger("phxqd.web")

Need = Literal["read", "control", "submit"]


class Web:
    def __init__(self, core: Core, address: listen.Address, tokens: Tokens) -> None:
        self.core = core
        self.address = address
        self.guard = Guard(address, tokens)
        self.rates = Rates()
        self.api = Api(self)
        self.dashboard = Dashboard(self)
        static = StaticFiles(packages=[("phxqd.web", "static")])
        self.app = Starlette(
            routes=[
                *self.api.routes(),
                *self.dashboard.routes(),
                Mount("/static", app=static, name="static"),
            ],
            exception_handlers={
                ApiError: self._error,
                Refused: self._error,
                404: self._not_found,
                405: self._not_allowed,
                Exception: self._internal,
            },
        )
        self.drain = Drain(self.app)
        self.asgi = SecurityHeaders(self.drain)

    def allow(self, request: Request, need: Need) -> Who:
        """Who is asking, if they may do `need`; else ApiError (401 or 403)."""
        scope: Any = request.scope
        guard = self.guard
        if not guard.host_ok(scope):
            raise ApiError("forbidden", "this address answers only to a loopback Host name")
        who = guard.identify(scope)
        if isinstance(who, str):
            raise ApiError("unauthorized", who)
        if who.access is None:
            raise ApiError("unauthorized", "a token is needed: Authorization: Bearer TOKEN")
        if need != "read" and who.access != "control":
            raise ApiError("forbidden", "this token may only read")
        if need == "submit":
            if not self.core.settings.http_submit:
                raise ApiError("forbidden", "submitting over HTTP is off (http_submit = false)")
            if not who.proven:
                raise ApiError("unauthorized", "submitting needs the control token")
        if request.method not in SAFE_METHODS and who.ambient:
            if not guard.same_origin(scope):
                raise ApiError("forbidden", "cross-site request refused")
            if not guard.csrf_ok(scope, who):
                raise ApiError("forbidden", "missing or wrong X-CSRF-Token")
        return who

    async def _error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError | Refused)
        if self.dashboard.is_page(request):
            return self.dashboard.error_page(request, exc.code, exc.message)
        return error_response(exc.code, exc.message)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return await self._error(request, ApiError("not_found", f"no such path {request.url.path}"))

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        message = f"{request.method} is not allowed on {request.url.path}"
        return json_response({"error": {"code": "usage", "message": message}}, 405)

    async def _internal(self, request: Request, exc: Exception) -> Response:
        # (uvicorn logs the traceback: Starlette raises it again after this answer)
        return error_response("internal", f"internal error: {type(exc).__name__}: {exc}")

    async def sample_rates(self) -> None:
        stats = self.core.backend.stats
        while True:
            self.rates.sample(time.time(), stats.jobs)
            await anyio.sleep(PERIOD)


class Serving:
    """The server and the web's own task (rates), run together in one task."""

    def __init__(self, web: Web, server: WebServer) -> None:
        self.web = web
        self.server = server

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.web.sample_rates)
            await self.server.run()
            tg.cancel_scope.cancel()

    async def stop(self, grace: float) -> None:
        """As the Unix socket stops, alongside it (daemon.py): see WebServer.stop."""
        await self.server.stop(grace)


def open_server(core: Core) -> Serving:
    """Bind `http_listen` (OSError, ValueError if it cannot be) and build the app."""
    settings = core.settings
    assert settings.http_listen is not None
    address = listen.parse(settings.http_listen)
    tokens = Tokens(settings.state_dir)
    tokens.ensure()  # made now, so `phxqd http-token` and the file agree from the start
    sock = listen.bind(address)
    web = Web(core, address, tokens)
    log.info(
        "http: API and dashboard on %s (%s)",
        f"unix:{address.path}" if address.path else f"http://{address.text}/",
        "loopback, no token needed to read or control"
        if address.loopback
        else "a token is needed: phxqd http-token",
    )
    return Serving(web, WebServer(web.asgi, sock, web.drain))
