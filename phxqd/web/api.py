"""The JSON API under /api/v1: the same requests as the Unix socket's, through the same
path (`Core.handle` with the protocol's request Structs), answered as JSON. Errors are
`{"error": {"code", "message"}}` with phxqctl's codes and messages, and an HTTP status per
code (`STATUS_OF`)."""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from phxqd import metrics, protocol
from phxqd.model import STATUSES, JobSpec
from phxqd.protocol import Refused

if TYPE_CHECKING:
    from phxqd.web.app import Web

#: HTTP status of each error code (phxqctl's codes, and the two of HTTP's own)
STATUS_OF = {
    "usage": 400,
    "upgrade": 400,
    "not_found": 404,
    "refused": 409,
    "internal": 500,
    "unauthorized": 401,
    "forbidden": 403,
}
#: most jobs in one page of /api/v1/jobs
MAX_PAGE = 1000
DEFAULT_PAGE = 50
#: a bare request for a log sends at most this much
LOG_LIMIT = 1024 * 1024
#: seconds between comment lines on an idle event stream (so a gone client is noticed)
HEARTBEAT = 15.0

json_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SubmitBody(msgspec.Struct, forbid_unknown_fields=True):
    jobs: list[JobSpec]


class Ids(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[int]


class QueueBody(msgspec.Struct, forbid_unknown_fields=True):
    queue: str | None = None


class ClearBody(msgspec.Struct, forbid_unknown_fields=True):
    status: str | None = None
    queue: str | None = None


class Concurrency(msgspec.Struct, forbid_unknown_fields=True):
    concurrency: int | None


class Page(msgspec.Struct):
    """A page of jobs, newest first; `next`: the `before` of the next page (None: last)."""

    jobs: list[Any]
    next: int | None


class LogText(msgspec.Struct):
    """A part of a job's log as text (UTF-8, bad bytes replaced): `offset` is where the
    next read starts, `size` the log's size when read, `finished` whether the job had."""

    id: int
    data: str
    offset: int
    size: int
    finished: bool


class QueueRates(msgspec.Struct):
    """One queue with its rate: `/api/v1/queues` (QueueInfo, plus these)."""

    queue: str
    counts: dict[str, int]
    concurrency: int | None
    concurrency_from: str | None
    paused: bool
    active: int
    throughput_per_minute: float | None
    eta_seconds: float | None


class Health(msgspec.Struct):
    ok: bool
    writable: bool
    journal_error: str | None
    uptime: float


def json_response(value: Any, status: int = 200) -> Response:
    return Response(json_encoder.encode(value), status, media_type="application/json")


def error_response(code: str, message: str) -> Response:
    return json_response({"error": {"code": code, "message": message}}, STATUS_OF.get(code, 500))


def int_param(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError("usage", f"{name} must be an integer, not {raw!r}") from None


def job_id(request: Request) -> int:
    raw = request.path_params["id"]
    try:
        return int(raw)
    except ValueError:
        raise ApiError("usage", f"job id must be an integer, not {raw!r}") from None


async def body(request: Request, kind: type[Any]) -> Any:
    data = await request.body()
    try:
        return msgspec.json.decode(data or b"{}", type=kind)
    except msgspec.DecodeError as e:
        raise ApiError("usage", f"bad request body: {e}") from None


def events_text(event: protocol.JobEvent) -> bytes:
    """One SSE message: the event as `phxqctl watch --json` prints it."""
    fields = msgspec.to_builtins(event)
    fields.pop("type", None)
    return b"data: " + json_encoder.encode(fields) + b"\n\n"


def stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        chunks,
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


class Api:
    def __init__(self, web: Web) -> None:
        self.web = web
        self.core = web.core

    def routes(self) -> list[Route]:
        r = Route
        return [
            r("/api/v1/openapi.json", self.openapi),
            r("/api/v1/health", self.health),
            r("/health", self.health),
            r("/metrics", self.metrics),
            r("/api/v1/status", self.status),
            r("/api/v1/queues", self.queues),
            r("/api/v1/queues/{queue}/pause", self.pause, methods=["POST"]),
            r("/api/v1/queues/{queue}/resume", self.resume, methods=["POST"]),
            r("/api/v1/queues/{queue}/concurrency", self.concurrency, methods=["PUT"]),
            r("/api/v1/pause", self.pause, methods=["POST"]),
            r("/api/v1/resume", self.resume, methods=["POST"]),
            r("/api/v1/jobs", self.jobs, methods=["GET"]),
            r("/api/v1/jobs", self.submit, methods=["POST"]),
            r("/api/v1/jobs/{id}", self.job),
            r("/api/v1/jobs/{id}/log", self.log),
            r("/api/v1/jobs/{id}/log/follow", self.follow),
            r("/api/v1/jobs/{id}/cancel", self.cancel_one, methods=["POST"]),
            r("/api/v1/jobs/{id}/retry", self.retry_one, methods=["POST"]),
            r("/api/v1/cancel", self.cancel, methods=["POST"]),
            r("/api/v1/retry", self.retry, methods=["POST"]),
            r("/api/v1/retry-failed", self.retry_failed, methods=["POST"]),
            r("/api/v1/clear", self.clear, methods=["POST"]),
            r("/api/v1/events", self.events),
        ]

    # ---------------------------------------------------------------- reading

    async def openapi(self, request: Request) -> Response:
        self.web.allow(request, "read")
        from phxqd.web.openapi import document

        return json_response(document(self.web.core.settings.http_submit))

    async def health(self, request: Request) -> Response:
        """For load balancers: no token needed; 503 while the journal refuses writes."""
        health = self.core.backend.health()
        views = self.core.views
        answer = Health(
            health.writable, health.writable, health.error, time.time() - views.started_at
        )
        return json_response(answer, 200 if health.writable else 503)

    async def metrics(self, request: Request) -> Response:
        self.web.allow(request, "read")
        await metrics.load_library()
        return Response(
            await metrics.render(self.core.views),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    async def status(self, request: Request) -> Response:
        self.web.allow(request, "read")
        return json_response(await self.core.handle(protocol.Status()))

    async def queues(self, request: Request) -> Response:
        self.web.allow(request, "read")
        return json_response(self.queue_rates(await self.core.handle(protocol.Queues())))

    def queue_rates(self, infos: list[protocol.QueueInfo]) -> list[QueueRates]:
        rates = self.web.rates
        out = []
        for q in infos:
            backlog = q.counts.get("pending", 0) + q.counts.get("retrying", 0)
            backlog += q.counts.get("running", 0)
            out.append(
                QueueRates(
                    q.queue,
                    q.counts,
                    q.concurrency,
                    q.concurrency_from,
                    q.paused,
                    q.active,
                    rates.per_minute(q.queue),
                    rates.eta(q.queue, backlog),
                )
            )
        return out

    async def page(
        self,
        status: str | None,
        queue: str | None,
        label: str | None,
        key: str | None,
        before: int | None,
        limit: int,
    ) -> Page:
        if status is not None and status not in STATUSES:
            raise Refused("usage", f"unknown status {status!r}: one of " + ", ".join(STATUSES))
        if not 1 <= limit <= MAX_PAGE:
            raise ApiError("usage", f"limit must be between 1 and {MAX_PAGE}")
        jobs = await self.core.backend.select(
            status, queue, limit + 1, before=before, label=label, key=key
        )
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return Page(jobs, jobs[-1].id if more and jobs else None)

    async def jobs(self, request: Request) -> Response:
        self.web.allow(request, "read")
        q = request.query_params
        limit = int_param(request, "limit", DEFAULT_PAGE)
        assert limit is not None
        page = await self.page(
            q.get("status") or None,
            q.get("queue") or None,
            q.get("label") or None,
            q.get("key") or None,
            int_param(request, "before"),
            limit,
        )
        return json_response(page)

    async def job(self, request: Request) -> Response:
        self.web.allow(request, "read")
        return json_response(await self.core.handle(protocol.Show(job_id(request))))

    async def log(self, request: Request) -> Response:
        self.web.allow(request, "read")
        return json_response(await self.read_log(request))

    async def read_log(self, request: Request) -> LogText:
        """?offset=N&limit=M (bytes), or ?tail=N: the last N bytes."""
        jid = job_id(request)
        await self.core.handle(protocol.Show(jid))  # not_found as for phxqctl logs
        limit = int_param(request, "limit", LOG_LIMIT) or 0
        tail = int_param(request, "tail")
        size = await self.log_size(jid)
        offset = int_param(request, "offset", 0) or 0
        if tail is not None:
            offset, limit = max(size - max(tail, 0), 0), max(tail, 0)
        if offset < 0 or limit < 0:
            raise ApiError("usage", "offset and limit must be 0 or more")
        part = await self.core.logs.read(jid, offset, min(limit, LOG_LIMIT))
        text = part.data.decode("utf-8", "replace")
        return LogText(jid, text, part.offset, max(size, part.offset), part.finished)

    async def log_size(self, jid: int) -> int:
        path = self.core.logs.path(jid)

        def size() -> int:
            try:
                return os.stat(path).st_size
            except OSError:
                return 0

        return await anyio.to_thread.run_sync(size)

    async def follow(self, request: Request) -> Response:
        """The log as it grows, as SSE: `chunk` events ({"data", "offset"}), then one
        `end` event once the job has finished and its log has been sent."""
        self.web.allow(request, "read")
        jid = job_id(request)
        offset = int_param(request, "offset", 0) or 0
        await self.core.handle(protocol.Show(jid))
        frames = await self.core.handle(protocol.Logs(jid, offset, 64 * 1024, follow=True))

        async def chunks() -> AsyncIterator[bytes]:
            decode = codecs.getincrementaldecoder("utf-8")("replace").decode
            async for frame in frames:
                if isinstance(frame, protocol.Chunk):
                    text = decode(frame.data)
                    payload = {"data": text, "offset": frame.offset}
                    yield b"event: chunk\ndata: " + json_encoder.encode(payload) + b"\n\n"
                else:
                    rest = decode(b"", final=True)
                    end = {"data": rest, "offset": frame.result.offset}
                    yield b"event: end\ndata: " + json_encoder.encode(end) + b"\n\n"

        return stream(chunks())

    async def events(self, request: Request) -> Response:
        """Job events as SSE, the lines of `phxqctl watch --json` (?ids=1,2: those jobs'),
        after one `ready` event that says the stream is listening."""
        self.web.allow(request, "read")
        raw = request.query_params.get("ids")
        ids: frozenset[int] | None = None
        if raw:
            try:
                ids = frozenset(int(i) for i in raw.split(","))
            except ValueError:
                raise ApiError("usage", "ids must be integers separated by commas") from None
            for i in ids:
                await self.core.handle(protocol.Show(i))
        feed = self.core.backend.feed

        async def messages() -> AsyncIterator[bytes]:
            with feed.listen(ids) as listener:
                # said once listening: no event after this one can be missed
                yield b"event: ready\ndata: {}\n\n"
                while True:
                    taken: list[protocol.JobEvent] = []
                    with anyio.move_on_after(HEARTBEAT):
                        taken = await listener.take()
                    if not taken:
                        yield b": idle\n\n"
                    for event in taken:
                        yield events_text(event)

        return stream(messages())

    # ---------------------------------------------------------------- changing

    async def submit(self, request: Request) -> Response:
        self.web.allow(request, "submit")
        specs = (await body(request, SubmitBody)).jobs
        return json_response(await self.core.handle(protocol.Submit(specs)))

    async def cancel_one(self, request: Request) -> Response:
        self.web.allow(request, "control")
        [job] = await self.core.handle(protocol.Cancel([job_id(request)]))
        return json_response(job)

    async def retry_one(self, request: Request) -> Response:
        self.web.allow(request, "control")
        [job] = await self.core.handle(protocol.Retry([job_id(request)]))
        return json_response(job)

    async def cancel(self, request: Request) -> Response:
        self.web.allow(request, "control")
        ids = (await body(request, Ids)).ids
        return json_response(await self.core.handle(protocol.Cancel(ids)))

    async def retry(self, request: Request) -> Response:
        self.web.allow(request, "control")
        ids = (await body(request, Ids)).ids
        return json_response(await self.core.handle(protocol.Retry(ids)))

    async def retry_failed(self, request: Request) -> Response:
        self.web.allow(request, "control")
        queue = (await body(request, QueueBody)).queue
        return json_response(await self.core.handle(protocol.RetryFailed(queue)))

    async def clear(self, request: Request) -> Response:
        self.web.allow(request, "control")
        b = await body(request, ClearBody)
        return json_response(await self.core.handle(protocol.Clear(b.status, b.queue)))

    async def pause(self, request: Request) -> Response:
        self.web.allow(request, "control")
        queue = request.path_params.get("queue")
        return json_response(await self.core.handle(protocol.Pause(queue)))

    async def resume(self, request: Request) -> Response:
        self.web.allow(request, "control")
        queue = request.path_params.get("queue")
        return json_response(await self.core.handle(protocol.Resume(queue)))

    async def concurrency(self, request: Request) -> Response:
        self.web.allow(request, "control")
        limit = (await body(request, Concurrency)).concurrency
        queue = request.path_params["queue"]
        infos = await self.core.handle(protocol.SetQueue(queue, limit))
        return json_response(self.queue_rates(infos))
