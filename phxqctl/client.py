"""A synchronous Python client for phxqd, on the standard library's socket and msgspec.

    from phxqctl import Client
    with Client() as c:
        job = c.submit(["echo", "hi"])
        c.wait([job.id])

It returns typed objects (phxqd.model's and phxqd.replies' Structs, decoded as the table
phxqd.protocol.OPERATIONS says each request is answered) and so imports msgspec and the
shared protocol and model, nothing else of the daemon. The command line does not use it:
it talks through phxqctl.wire with plain dicts, to start fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from phxqctl import locate
from phxqctl.errors import DaemonUnreachable, NotInAJob, PhxqError, RemoteError, UsageError
from phxqctl.report import progress
from phxqctl.wire import Connection
from phxqd import protocol
from phxqd.contract import request_problem, value_problem
from phxqd.model import Call, Job, JobSpec, SubmitResult, validate_spec
from phxqd.schedules_model import ScheduleSpec

__all__ = [
    "Client",
    "DaemonUnreachable",
    "NotInAJob",
    "PhxqError",
    "RemoteError",
    "UsageError",
    "progress",
]

#: spelled out once here: inside Client, `list` names the method
builtins_list = list
Jobs = list[Job]
SubmitResults = list[SubmitResult]
Ids = list[int]


class Client:
    """One connection to phxqd, opened on first use and reused for every call. A stream
    (`watch`, `follow_logs`) has a connection of its own, closed when the iteration ends,
    so the client can still be used while one is read."""

    def __init__(self, socket_path: str | Path | None = None, timeout: float | None = None):
        self.socket_path = Path(locate.socket_path(str(socket_path) if socket_path else None))
        self.timeout = timeout
        self._conn = Connection(str(self.socket_path), timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    # ---------------------------------------------------------------- the API

    def submit(self, argv: list[str], **options: Any) -> Job:
        """Queue a command; options are JobSpec's fields (queue, priority, key, ...)."""
        return self.submit_batch([JobSpec(argv=list(argv), **options)])[0].job

    def submit_call(
        self,
        func: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Queue a Python callable, "package.module:function"; args and kwargs must be
        msgpack-able. It runs in a persistent worker process (see docs/python-api.md)."""
        call = Call(func, list(args), dict(kwargs or {}))
        return self.submit_batch([JobSpec(call=call, **options)])[0].job

    def submit_batch(self, specs: Sequence[JobSpec]) -> SubmitResults:
        """Queue many jobs: one request and one fsync per 10,000 (protocol.MAX_BATCH). Like
        nq and task-spooler, a job runs in the directory it was submitted from unless its
        spec names another."""
        here = os.getcwd()
        specs = [
            msgspec.structs.replace(s, cwd=here if s.cwd is None else os.path.join(here, s.cwd))
            for s in specs
        ]
        results: SubmitResults = []
        for start in range(0, len(specs), protocol.MAX_BATCH):
            part = specs[start : start + protocol.MAX_BATCH]
            results += self.call(protocol.Submit(part))
        return results

    def status(self) -> dict[str, Any]:
        """The status map of docs/protocol.md as plain dicts (`call(protocol.Status())`
        gives it as a StatusReply)."""
        result: dict[str, Any] = self._call_plain(protocol.Status())
        return result

    def list(self, status: str | None = None, queue: str | None = None, limit: int = 50) -> Jobs:
        jobs: Jobs = self.call(protocol.List(status, queue, limit))
        return jobs

    def get(self, job_id: int) -> Job:
        job: Job = self.call(protocol.Show(job_id))
        return job

    def wait(self, ids: Ids, timeout: float | None = None) -> Jobs:
        jobs: Jobs = self.call(protocol.Wait(ids, timeout))
        return jobs

    def logs(self, job_id: int, offset: int = 0) -> tuple[bytes, int, bool]:
        """A chunk of the job's log from `offset`: (data, next offset, job finished)."""
        part: protocol.LogPart = self.call(protocol.Logs(job_id, offset))
        return part.data, part.offset, part.finished

    def cancel(self, ids: Ids) -> Jobs:
        jobs: Jobs = self.call(protocol.Cancel(ids))
        return jobs

    def retry(self, ids: Ids) -> Jobs:
        jobs: Jobs = self.call(protocol.Retry(ids))
        return jobs

    def retry_failed(self, queue: str | None = None) -> int:
        done: protocol.RetriedCount = self.call(protocol.RetryFailed(queue))
        return done.retried

    def clear(self, status: str | None = None, queue: str | None = None) -> int:
        done: protocol.ClearedCount = self.call(protocol.Clear(status, queue))
        return done.cleared

    def report_progress(
        self,
        job_id: int,
        attempt: int,
        percent: float | None = None,
        step: str | None = None,
        done: int | None = None,
        total: int | None = None,
    ) -> bool:
        """Set a running job's progress; False if that attempt is no longer running."""
        req = protocol.ReportProgress(job_id, attempt, percent, step, done, total)
        reply: protocol.Accepted = self.call(req)
        return reply.accepted

    def queues(self) -> builtins_list[dict[str, Any]]:
        """Every queue with its counts, concurrency limit and whether it is paused (plain
        dicts; `call(protocol.Queues())` gives QueueInfo Structs)."""
        result: builtins_list[dict[str, Any]] = self._call_plain(protocol.Queues())
        return result

    def set_queue(self, queue: str, concurrency: int | None) -> builtins_list[dict[str, Any]]:
        """Set a queue's concurrency at run time (kept across restarts); None: the config's."""
        request = protocol.SetQueue(queue, concurrency)
        result: builtins_list[dict[str, Any]] = self._call_plain(request)
        return result

    def set_rate(
        self, queue: str, per_second: float | None, burst: int = 1
    ) -> builtins_list[dict[str, Any]]:
        """Limit how often jobs of a queue start (a token bucket of `burst`, refilled at
        `per_second`; kept across restarts); None: back to the config's rate."""
        request = protocol.SetRate(queue, per_second, burst)
        result: builtins_list[dict[str, Any]] = self._call_plain(request)
        return result

    def schedule_add(
        self,
        name: str,
        job: JobSpec,
        *,
        cron: str | None = None,
        tz: str | None = None,
        every: float | None = None,
        catch_up: str = "skip",
        overlap: str = "skip",
    ) -> protocol.ScheduleInfo:
        """Add (or replace) a schedule that submits `job` at each fire time of `cron`
        (in `tz`) or every `every` seconds (docs/schedules.md)."""
        spec = ScheduleSpec(name, job, cron, tz, every, catch_up, overlap)  # type: ignore[arg-type]
        info: protocol.ScheduleInfo = self.call(protocol.ScheduleAdd(spec))
        return info

    def schedules(self) -> builtins_list[protocol.ScheduleInfo]:
        result: builtins_list[protocol.ScheduleInfo] = self.call(protocol.Schedules())
        return result

    def schedule(self, name: str, action: str = "show") -> protocol.ScheduleInfo:
        """`action` on schedule `name`: "show", "remove", "pause" or "resume"."""
        kinds: dict[str, type[protocol.Request]] = {
            "show": protocol.ScheduleShow,
            "remove": protocol.ScheduleRemove,
            "pause": protocol.SchedulePause,
            "resume": protocol.ScheduleResume,
        }
        if action not in kinds:
            raise ValueError(f"action is one of {', '.join(kinds)}, not {action!r}")
        info: protocol.ScheduleInfo = self.call(kinds[action](name))
        return info

    def schedule_run(self, name: str) -> Job:
        """Fire schedule `name` now, once; its job."""
        result: SubmitResult = self.call(protocol.ScheduleRun(name))
        return result.job

    def metrics(self) -> str:
        """The Prometheus text exposition of the daemon's metrics."""
        text: bytes = self.call(protocol.Metrics())
        return text.decode()

    def pause(self, queue: str | None = None) -> dict[str, Any]:
        """Pause a queue (or all); the status map after it, as `status()`."""
        result: dict[str, Any] = self._call_plain(protocol.Pause(queue))
        return result

    def resume(self, queue: str | None = None) -> dict[str, Any]:
        """Resume a queue (or all); the status map after it, as `status()`."""
        result: dict[str, Any] = self._call_plain(protocol.Resume(queue))
        return result

    # ----------------------------------------------------------------- streams

    def watch(self, ids: Ids | None = None) -> Iterator[protocol.JobEvent]:
        """Every event of every job (or of these), as it happens, until the iteration is
        stopped (break, close()). A `dropped` event says this reader fell behind and
        `count` events were lost; ask `status()` again for exact counts."""
        frames = self._stream(protocol.Watch(ids))
        return (f for f in frames if isinstance(f, protocol.JobEvent))

    def follow_logs(self, job_id: int, offset: int = 0) -> Iterator[bytes]:
        """The job's log from `offset`, as it is written, until the job has finished and
        all of its log was read."""
        frames = self._stream(protocol.Logs(job_id, offset, follow=True))
        return (f.data for f in frames if isinstance(f, protocol.Chunk) and f.data)

    def wait_events(
        self, ids: Ids, timeout: float | None = None
    ) -> Iterator[protocol.JobEvent | Jobs]:
        """`wait` with the jobs' events as they happen: yields each JobEvent, and last the
        list of finished jobs (what `wait` returns)."""
        return self._stream(protocol.Wait(ids, timeout, stream=True))

    def _stream(self, request: protocol.Request) -> Iterator[Any]:
        """The frames of a streaming request on a connection of its own: its stream
        frames, then the final reply's result (RemoteError for an error), typed as
        protocol.OPERATIONS says. The request is sent before this returns (not at the
        first next())."""
        conn = Connection(str(self.socket_path), self.timeout)
        try:
            conn.request(_encode(request))
        except BaseException:
            conn.close()
            raise
        return _frames(conn, protocol.reply_decoder_for(type(request), streamed=True))

    # ------------------------------------------------------------ the wire

    def call(self, request: protocol.Request) -> Any:
        """Send one request and return its reply's result, decoded into the type
        protocol.OPERATIONS gives its operation, or raise RemoteError."""
        return self._call(request, protocol.reply_decoder_for(type(request)))

    def _call_plain(self, request: protocol.Request) -> Any:
        """`call`, with the result as plain dicts and lists (what `status()` and
        `queues()` have always returned)."""
        return self._call(request, protocol.reply_decoder)

    def _call(self, request: protocol.Request, decoder: msgspec.msgpack.Decoder[Any]) -> Any:
        self._conn.request(_encode(request))
        reply = _decode(decoder, self._conn.recv())
        if isinstance(reply, protocol.Err):
            raise RemoteError(reply.code, reply.message)
        return reply.result


def _encode(request: protocol.Request) -> bytes:
    """The request's bytes, once phxqd.contract.request_problem has found nothing phxqd
    would refuse in it: a value out of range is a UsageError with phxqctl's message
    (`--priority must be an integer from ...`), not msgspec's OverflowError."""
    try:
        if isinstance(request, protocol.Submit):  # the specs as they are: no dicts made
            why = _specs_problem(request.jobs)
        else:
            why = request_problem(msgspec.to_builtins(request))
        if why is None:
            return protocol.encoder.encode(request)
    except (OverflowError, UnicodeEncodeError, ValueError, TypeError, RecursionError) as e:
        why = f"cannot send this {type(request).__name__} request: {e}"
    raise UsageError(why)


def _specs_problem(specs: list[JobSpec]) -> str | None:
    """request_problem's answer for the specs of a submit, from the Structs: the daemon's
    own validate_spec, and the callables' arguments as the wire takes them."""
    for i, spec in enumerate(specs):
        why = validate_spec(spec)
        if why is None and spec.call is not None:
            why = value_problem("--args", spec.call.args) or value_problem(
                "--kwargs", spec.call.kwargs
            )
        if why:
            return f"job {i + 1}: {why}" if len(specs) > 1 else why
    return None


def _frames(conn: Connection, decoder: msgspec.msgpack.Decoder[Any]) -> Iterator[Any]:
    try:
        while True:
            message = _decode(decoder, conn.recv())
            if isinstance(message, protocol.Err):
                raise RemoteError(message.code, message.message)
            if isinstance(message, protocol.Ok):
                yield message.result
                return
            yield message
    finally:
        conn.close()


def _decode(decoder: msgspec.msgpack.Decoder[Any], payload: bytes) -> Any:
    try:
        return decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise PhxqError(f"phxqd sent a reply this phxqctl cannot read: {e}") from None
