"""A synchronous Python client for phxqd, on the standard library's socket and msgspec.

    from phxqctl import Client
    with Client() as c:
        job = c.submit(["echo", "hi"])
        c.wait([job.id])

It imports no daemon code beyond the shared protocol and model, so `phxqctl` starts fast.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload

import msgspec

from phxqd import paths, protocol
from phxqd.model import Call, Job, JobSpec, SubmitResult
from phxqd.protocol import ERROR_EXIT

#: spelled out once here: inside Client, `list` names the method
T = TypeVar("T")
builtins_list = list
Jobs = list[Job]
SubmitResults = list[SubmitResult]
Ids = list[int]


class PhxqError(Exception):
    """Base of the client's errors; `exit_status` is what phxqctl exits with."""

    exit_status = 1


class DaemonUnreachable(PhxqError):
    exit_status = 3


class RemoteError(PhxqError):
    """The daemon refused the request; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.exit_status = ERROR_EXIT.get(code, 1)


def progress(
    percent: float | None = None,
    step: str | None = None,
    done: int | None = None,
    total: int | None = None,
) -> bool:
    """Report the progress of the job this code runs in (fields not given keep their value).

        for i, path in enumerate(paths):
            phxqctl.progress(done=i, total=len(paths), step=path.name)

    Uses PHXQ_JOB_ID, PHXQ_ATTEMPT and PHXQ_SOCKET, which phxqd sets for every job; outside
    a job it raises PhxqError. Each call is one short request: report a few times a second
    at most. Returns False if the daemon no longer counts this attempt as running.
    """
    env = os.environ
    if "PHXQ_JOB_ID" not in env or "PHXQ_ATTEMPT" not in env:
        raise NotInAJob("not inside a phxq job (PHXQ_JOB_ID and PHXQ_ATTEMPT are not set)")
    with Client(env.get("PHXQ_SOCKET")) as c:
        return c.report_progress(
            int(env["PHXQ_JOB_ID"]), int(env["PHXQ_ATTEMPT"]), percent, step, done, total
        )


class NotInAJob(PhxqError):
    exit_status = 2


class Client:
    """One connection to phxqd, opened on first use and reused for every call."""

    def __init__(self, socket_path: str | Path | None = None, timeout: float | None = None):
        self.socket_path = paths.client_socket_path(str(socket_path) if socket_path else None)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

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
            results += self.call(protocol.Submit(part), SubmitResults)
        return results

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call(protocol.Status())
        return result

    def list(self, status: str | None = None, queue: str | None = None, limit: int = 50) -> Jobs:
        return self.call(protocol.List(status, queue, limit), Jobs)

    def get(self, job_id: int) -> Job:
        return self.call(protocol.Show(job_id), Job)

    def wait(self, ids: Ids, timeout: float | None = None) -> Jobs:
        return self.call(protocol.Wait(ids, timeout), Jobs)

    def logs(self, job_id: int, offset: int = 0) -> tuple[bytes, int, bool]:
        """A chunk of the job's log from `offset`: (data, next offset, job finished)."""
        r = self.call(protocol.Logs(job_id, offset))
        return bytes(r["data"]), int(r["offset"]), bool(r["finished"])

    def cancel(self, ids: Ids) -> Jobs:
        return self.call(protocol.Cancel(ids), Jobs)

    def retry(self, ids: Ids) -> Jobs:
        return self.call(protocol.Retry(ids), Jobs)

    def retry_failed(self, queue: str | None = None) -> int:
        return int(self.call(protocol.RetryFailed(queue))["retried"])

    def clear(self, status: str | None = None, queue: str | None = None) -> int:
        return int(self.call(protocol.Clear(status, queue))["cleared"])

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
        return bool(self.call(req)["accepted"])

    def queues(self) -> builtins_list[dict[str, Any]]:
        """Every queue with its counts, concurrency limit and whether it is paused."""
        result: builtins_list[dict[str, Any]] = self.call(protocol.Queues())
        return result

    def set_queue(self, queue: str, concurrency: int | None) -> builtins_list[dict[str, Any]]:
        """Set a queue's concurrency at run time (kept across restarts); None: the config's."""
        result: builtins_list[dict[str, Any]] = self.call(protocol.SetQueue(queue, concurrency))
        return result

    def metrics(self) -> str:
        """The Prometheus text exposition of the daemon's metrics."""
        return bytes(self.call(protocol.Metrics(), bytes)).decode()

    def pause(self, queue: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.call(protocol.Pause(queue))
        return result

    def resume(self, queue: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.call(protocol.Resume(queue))
        return result

    # ------------------------------------------------------------ the wire

    @overload
    def call(self, request: protocol.Request) -> Any: ...
    @overload
    def call(self, request: protocol.Request, result_type: type[T]) -> T: ...
    def call(self, request: protocol.Request, result_type: Any = Any) -> Any:
        """Send one request and return its reply's result decoded as `result_type`, or
        raise RemoteError."""
        if self._sock is None:
            self._sock = self._connect()
            self._sock.sendall(
                protocol.frame(protocol.Hello(protocol.PROTOCOL_VERSION, "phxqctl"))
                + protocol.frame(request)
            )
            self._expect_reply(protocol.reply_decoder)
        else:
            self._sock.sendall(protocol.frame(request))
        decoder = self._decoders.get(result_type)
        if decoder is None:
            decoder = self._decoders[result_type] = protocol.reply_decoder_for(result_type)
        return self._expect_reply(decoder)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            why = "no socket there" if isinstance(e, FileNotFoundError) else "nothing listening"
            raise DaemonUnreachable(
                f"phxqd is not running at {self.socket_path} ({why}); start it with `phxqd` "
                f"(or `make run`), or point PHXQ_SOCKET / --socket at its socket"
            ) from None
        except PermissionError:
            sock.close()
            raise DaemonUnreachable(f"no permission to connect to {self.socket_path}") from None
        return sock

    def _expect_reply(self, decoder: msgspec.msgpack.Decoder[Any]) -> Any:
        assert self._sock is not None
        header = self._recv_exactly(protocol.HEADER.size)
        (length,) = protocol.HEADER.unpack(header)
        if length > protocol.MAX_FRAME:
            raise PhxqError(f"phxqd sent a frame of {length} bytes; refusing it")
        try:
            reply = decoder.decode(self._recv_exactly(length))
        except msgspec.DecodeError as e:
            raise PhxqError(f"phxqd sent a reply this phxqctl cannot read: {e}") from None
        if isinstance(reply, protocol.Err):
            raise RemoteError(reply.code, reply.message)
        return reply.result

    def _recv_exactly(self, n: int) -> bytes:
        assert self._sock is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                self.close()
                raise DaemonUnreachable("phxqd closed the connection (did it stop?)")
            buf += chunk
        return bytes(buf)
