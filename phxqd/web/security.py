"""Who may do what over HTTP, and the browser's protections, as one ASGI middleware.

- A bearer token (`Authorization: Bearer`) is read-only or control (tokens.py).
- On a loopback address no token is needed to read or control (as for the Unix socket's
  own user... and every local user: see docs/http-api.md), but the Host header must name
  loopback (a DNS-rebinding page cannot pass it). Anywhere else, a token is required.
- Submitting always needs a control token, and `http_submit = true`.
- The dashboard's session is a random cookie (HttpOnly, SameSite=Strict) tied to a
  per-session CSRF token: a request that changes something and rides on a cookie or on
  loopback's trust must come from the same origin (Origin, Sec-Fetch-Site) and, with a
  cookie, carry the CSRF token in `X-CSRF-Token`. Requests with a bearer token carry no
  ambient credential and need neither.
- Every response gets the security headers (a strict CSP: no inline script, nothing from
  elsewhere).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from phxqd.web.listen import Address
from phxqd.web.tokens import Kind, Tokens

Scope = MutableMapping[str, Any]
COOKIE = "phxq_session"
#: sessions kept in memory, oldest dropped first
MAX_SESSIONS = 1000
SESSION_SECONDS = 12 * 3600.0
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


@dataclass
class Session:
    access: Kind
    csrf: str
    created: float
    #: logged in with a control token (not only loopback's trust): may submit
    proven: bool


@dataclass
class Who:
    """What the request may do: `access` None (nothing), "read" or "control"."""

    access: Kind | None
    #: a control token was shown (bearer, or a session that logged in with one)
    proven: bool = False
    session: Session | None = None
    session_id: str | None = None
    #: the credential rides along by itself (a cookie, loopback): CSRF checks apply
    ambient: bool = False


class Sessions:
    def __init__(self) -> None:
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def new(self, access: Kind, proven: bool) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(access, secrets.token_urlsafe(32), time.time(), proven)
        self._by_id[sid] = session
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)
        return sid, session

    def get(self, sid: str) -> Session | None:
        session = self._by_id.get(sid)
        if session is not None and time.time() - session.created > SESSION_SECONDS:
            del self._by_id[sid]
            return None
        return session

    def drop(self, sid: str) -> None:
        self._by_id.pop(sid, None)


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def cookie(scope: Scope, name: str) -> str | None:
    raw = header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def host_name(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rpartition(":")[0] if ":" in host else host


class Guard:
    """Works out `Who` for a request; the routes say what they need (`needs`)."""

    def __init__(self, address: Address, tokens: Tokens) -> None:
        self.address = address
        self.tokens = tokens
        self.sessions = Sessions()

    def identify(self, scope: Scope) -> Who | str:
        """`Who`, or the error text of a refused credential (a wrong token)."""
        auth = header(scope, b"authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            kind = self.tokens.check(token.strip()) if scheme.lower() == "bearer" else None
            if kind is None:
                return "the token is not valid (see `phxqd http-token`)"
            return Who(kind, proven=kind == "control")
        sid = cookie(scope, COOKIE)
        if sid:
            session = self.sessions.get(sid)
            if session is not None:
                return Who(session.access, session.proven, session, sid, ambient=True)
        if self.address.loopback:
            return Who("control", ambient=True)
        return Who(None)

    def host_ok(self, scope: Scope) -> bool:
        """On loopback, the Host must be a loopback name (no DNS rebinding)."""
        if not self.address.loopback:
            return True
        host = header(scope, b"host")
        return host is not None and host_name(host) in LOOPBACK_NAMES

    @staticmethod
    def same_origin(scope: Scope) -> bool:
        """Whether a browser says the request comes from our own pages (a client that is
        not a browser sends neither header: nothing rides along for it)."""
        site = header(scope, b"sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = header(scope, b"origin")
        if origin is None:
            return True
        host = header(scope, b"host") or ""
        return origin in (f"http://{host}", f"https://{host}")

    @staticmethod
    def csrf_ok(scope: Scope, who: Who) -> bool:
        if who.session is None:
            return True
        sent = header(scope, b"x-csrf-token") or ""
        return hmac.compare_digest(sent.encode(), who.session.csrf.encode())


class SecurityHeaders:
    """Adds HEADERS (and no-store caching) to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in HEADERS if k not in present]
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
