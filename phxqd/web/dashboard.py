"""The dashboard: pages rendered on the server (Jinja2, every value escaped), kept live by
static/app.js over the event stream (/api/v1/events). It never lists every job: the
overview shows counts, the running jobs and the latest failures; the jobs page is one
keyset page at a time."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

import anyio
import jinja2
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from phxqd import protocol
from phxqd.model import STATUSES, Job
from phxqd.protocol import Refused
from phxqd.web.api import STATUS_OF, ApiError, job_id
from phxqd.web.security import COOKIE, SESSION_SECONDS, Who

if TYPE_CHECKING:
    from phxqd.web.app import Web

#: failures shown on the overview, each with this much of its log's end
FAILURES = 10
FAILURE_TAIL = 2048
#: a job page shows this much of the log's end, then follows it live
PAGE_TAIL = 256 * 1024
PAGE_SIZE = 50


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return ""
    return duration(now - ts) + " ago" if now >= ts else "in " + duration(ts - now)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def percent(progress: Any) -> float | None:
    if progress is None:
        return None
    f = progress.fraction()
    return None if f is None else round(f * 100, 1)


def what(job: Any) -> str:
    """A job's command line as text (or its callable)."""
    call = getattr(job, "call", None)
    if call is not None:
        return call if isinstance(call, str) else str(call.func)
    return " ".join(job.argv)


class Dashboard:
    def __init__(self, web: Web) -> None:
        self.web = web
        self.core = web.core
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("phxqd.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.globals.update(ago=ago, duration=duration, percent=percent, what=what)
        self.env = env

    def routes(self) -> list[Route]:
        return [
            Route("/", self.overview),
            Route("/fragment/overview", self.overview_fragment),
            Route("/jobs", self.jobs),
            Route("/jobs/{id}", self.job),
            Route("/fragment/jobs/{id}", self.job_fragment),
            Route("/jobs/{id}/log.txt", self.log_file),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
        ]

    @staticmethod
    def is_page(request: Request) -> bool:
        path = request.url.path
        return not path.startswith(("/api/", "/metrics", "/health", "/fragment/"))

    # ------------------------------------------------------------------ sessions

    def visitor(self, request: Request) -> tuple[Who, str | None]:
        """Who views a page, and a new session id to set as a cookie (on loopback, a
        session is made on the first visit; elsewhere one logs in with a token)."""
        try:
            who = self.web.allow(request, "read")
        except ApiError as e:
            if e.code == "unauthorized":  # no session, or one that expired
                raise _LoginNeeded() from None
            raise
        if who.session is None and who.ambient:
            sid, session = self.web.guard.sessions.new("control", proven=False)
            return Who("control", False, session, sid, ambient=True), sid
        return who, None

    def render(self, request: Request, template: str, **context: Any) -> Response:
        try:
            who, new_sid = self.visitor(request)
        except _LoginNeeded:
            return RedirectResponse("/login", 303)
        html = self.env.get_template(template).render(
            csrf=who.session.csrf if who.session else "",
            control=who.access == "control",
            now=time.time(),
            **context,
        )
        response = HTMLResponse(html)
        if new_sid is not None:
            set_session(response, new_sid)
        return response

    def error_page(self, request: Request, code: str, message: str) -> Response:
        html = self.env.get_template("error.html").render(code=code, message=message)
        return HTMLResponse(html, STATUS_OF.get(code, 500))

    # ------------------------------------------------------------------- pages

    async def live(self) -> dict[str, Any]:
        """What the overview's live part shows: O(queues + running + FAILURES)."""
        status = await self.core.handle(protocol.Status())
        queues = self.web.api.queue_rates(await self.core.handle(protocol.Queues()))
        failed = await self.core.backend.select("failed", None, FAILURES)
        tails = {}
        for job in failed:
            tails[job.id] = await self.tail(job.id, FAILURE_TAIL)
        return {
            "status": status,
            "queues": queues,
            "failed": failed,
            "tails": tails,
        }

    async def tail(self, jid: int, size: int) -> str:
        path = self.core.logs.path(jid)

        def read() -> bytes:
            try:
                with open(path, "rb") as f:
                    end = f.seek(0, os.SEEK_END)
                    f.seek(max(end - size, 0))
                    return f.read(size)
            except OSError:
                return b""

        data = await anyio.to_thread.run_sync(read)
        return data.decode("utf-8", "replace")

    async def overview(self, request: Request) -> Response:
        return self.render(request, "overview.html", **await self.live())

    async def overview_fragment(self, request: Request) -> Response:
        self.web.allow(request, "read")
        who = self.web.guard.identify(request.scope)
        control = not isinstance(who, str) and who.access == "control"
        html = self.env.get_template("_live.html").render(
            now=time.time(), control=control, **await self.live()
        )
        return HTMLResponse(html)

    async def jobs(self, request: Request) -> Response:
        """One page of jobs, filtered; `q` finds by id, key or label."""
        q = request.query_params
        search = (q.get("q") or "").strip()
        filters = {k: q.get(k) or None for k in ("status", "queue", "label", "key")}
        if search:
            if search.lstrip("#").isdigit():
                found = await self.core.backend.find(int(search.lstrip("#")))
                if found is not None:
                    return RedirectResponse(f"/jobs/{found.id}", 303)
            by_key = await self.core.backend.select(None, None, 1, key=search)
            if by_key and not filters["label"]:
                filters["key"] = search
            else:
                filters["label"] = search
        before = q.get("before")
        page = await self.web.api.page(
            filters["status"],
            filters["queue"],
            filters["label"],
            filters["key"],
            int(before) if before and before.isdigit() else None,
            PAGE_SIZE,
        )
        older = None
        if page.next is not None:
            older = "/jobs?" + urlencode(
                {**{k: v for k, v in filters.items() if v}, "before": page.next}
            )
        return self.render(
            request,
            "jobs.html",
            jobs=page.jobs,
            filters=filters,
            search=search,
            statuses=STATUSES,
            older=older,
        )

    async def job_context(self, jid: int) -> dict[str, Any]:
        job: Job = await self.core.handle(protocol.Show(jid))
        size = await self.web.api.log_size(jid)
        start = max(size - PAGE_TAIL, 0)
        part = await self.core.logs.read(jid, start, PAGE_TAIL)
        return {
            "job": job,
            "log": part.data.decode("utf-8", "replace"),
            "log_start": start,
            "log_offset": part.offset,
        }

    async def job(self, request: Request) -> Response:
        return self.render(request, "job.html", **await self.job_context(job_id(request)))

    async def job_fragment(self, request: Request) -> Response:
        who = self.web.allow(request, "read")
        context = await self.job_context(job_id(request))
        html = self.env.get_template("_job.html").render(
            now=time.time(), control=who.access == "control", **context
        )
        return HTMLResponse(html)

    async def log_file(self, request: Request) -> Response:
        self.web.allow(request, "read")
        jid = job_id(request)
        await self.core.handle(protocol.Show(jid))
        path = self.core.logs.path(jid)
        if not await anyio.to_thread.run_sync(path.exists):
            return Response(b"", media_type="text/plain; charset=utf-8")
        return FileResponse(path, media_type="text/plain; charset=utf-8")

    # ------------------------------------------------------------------- login

    async def login_form(self, request: Request) -> Response:
        html = self.env.get_template("login.html").render(message="")
        return HTMLResponse(html)

    async def login(self, request: Request) -> Response:
        guard = self.web.guard
        if not guard.host_ok(request.scope) or not guard.same_origin(request.scope):
            raise ApiError("forbidden", "cross-site request refused")
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        kind = guard.tokens.check(token)
        if kind is None:
            html = self.env.get_template("login.html").render(message="That token is not valid.")
            return HTMLResponse(html, 401)
        sid, _ = guard.sessions.new(kind, proven=kind == "control")
        response = RedirectResponse("/", 303)
        set_session(response, sid)
        return response

    async def logout(self, request: Request) -> Response:
        who = self.web.allow(request, "read")
        if (
            request.method != "GET"
            and who.ambient
            and not self.web.guard.csrf_ok(request.scope, who)
        ):
            raise Refused("forbidden", "missing or wrong X-CSRF-Token")
        if who.session_id:
            self.web.guard.sessions.drop(who.session_id)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/")
        return response


class _LoginNeeded(Exception):
    pass


def set_session(response: Response, sid: str) -> None:
    response.set_cookie(
        COOKIE, sid, max_age=int(SESSION_SECONDS), path="/", httponly=True, samesite="strict"
    )
