"""Persistent Python worker processes for callable jobs, and running one call on them.

A worker (`python -m phxqd.worker`) runs one call at a time and is reused, so a module is
imported once for many jobs. It is recycled after `max_jobs` calls or once its RSS passes
`max_rss`. Anything that ends a call abnormally (the worker dying, a timeout, a cancel)
also ends the worker: its process group is killed and the next call gets a fresh one.
How many calls run at once is the dispatcher's business, as for commands.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec
import psutil

from phxqd import pool
from phxqd.model import Job
from phxqd.worker import HEADER, Done, Task

_task_encoder = msgspec.msgpack.Encoder()
_done_decoder = msgspec.msgpack.Decoder(Done)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    channel: socket.socket
    pidfd: int
    create_time: float | None
    calls: int = 0


@dataclass
class WorkerPool:
    python: str = sys.executable
    pythonpath: list[str] = field(default_factory=list)
    max_jobs: int = 1000
    max_rss: int | None = None
    idle: list[Worker] = field(default_factory=list)
    #: calls running now, and workers started since phxqd did (for metrics)
    busy: int = 0
    started: int = 0

    async def run_call(
        self,
        job: Job,
        log_path: Path,
        socket_path: Path,
        grace: float,
        stop: pool.Stop,
        started: Callable[[int | None, float | None], Awaitable[None]],
    ) -> pool.Outcome:
        """One attempt of a callable job, with the same contract as `pool.run_command`."""
        assert job.call is not None
        if stop.reason is not None:
            return pool.Outcome(None, stop.reason, cancelled=True)
        try:
            worker = self.idle.pop() if self.idle else self._spawn(log_path)
        except OSError as e:
            await started(None, None)
            return pool.Outcome(None, f"cannot start {self.python}: {e.strerror}", retryable=False)
        task = Task(
            job.id,
            job.attempts + 1,
            job.call.func,
            job.call.args,
            job.call.kwargs,
            str(log_path),
            job.cwd,
            _job_env(job, socket_path),
        )
        healthy = False
        self.busy += 1
        try:
            await started(worker.proc.pid, worker.create_time)
            timeout = job.timeout if job.timeout is not None else float("inf")
            with anyio.move_on_after(timeout) as timer, stop.scope:
                reply = await _exchange(worker.channel, _task_encoder.encode(task))
            if timer.cancelled_caught or stop.scope.cancelled_caught:
                with anyio.CancelScope(shield=True):
                    await pool.kill_tree(worker.proc, worker.pidfd, grace, (job.id, socket_path))
                code = worker.proc.wait()
                what = stop.reason or f"timed out after {job.timeout:g}s"
                return pool.Outcome(
                    code, f"{what} ({pool.describe(code)})", cancelled=stop.reason is not None
                )
            if reply is None:  # the worker died mid-call
                await anyio.wait_readable(worker.pidfd)
                code = worker.proc.wait()
                return pool.Outcome(code, f"the Python worker died: {pool.describe(code)}")
            done = _done_decoder.decode(reply)
            worker.calls += 1
            healthy = True
            if done.ok:
                return pool.Outcome(0, None, result=done.result)
            return pool.Outcome(1, done.error, retryable=not done.permanent)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await pool.kill_tree(worker.proc, worker.pidfd, grace)
            raise
        finally:
            self.busy -= 1
            if healthy and self._keep(worker):
                self.idle.append(worker)
            else:
                self._retire(worker, healthy)

    def close(self) -> None:
        """Let every idle worker go: closing its channel makes it exit."""
        while self.idle:
            self._retire(self.idle.pop())

    def _spawn(self, first_log: Path) -> Worker:
        ours, theirs = socket.socketpair()
        here = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [here, *self.pythonpath, *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PHXQ_WORKER_FD"] = str(theirs.fileno())
        # the first job's log gets the worker's own start-up errors (a missing msgspec...)
        log = os.open(first_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                [self.python, "-m", "phxqd.worker"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(log)
            theirs.close()
        ours.setblocking(False)
        self.started += 1
        try:
            create_time: float | None = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = None
        return Worker(proc, ours, os.pidfd_open(proc.pid), create_time)

    def _keep(self, worker: Worker) -> bool:
        if worker.calls >= self.max_jobs:
            return False
        if self.max_rss is not None:
            try:
                return int(psutil.Process(worker.proc.pid).memory_info().rss) <= self.max_rss
            except psutil.Error:
                return False
        return True

    def _retire(self, worker: Worker, healthy: bool = True) -> None:
        """A healthy worker exits on EOF of its channel; any other is killed with its group.

        Not waited for here (that could block the event loop): subprocess reaps it later.
        """
        worker.channel.close()
        if not healthy and worker.proc.poll() is None:
            pool.signal_tree(worker.proc.pid, [], signal.SIGKILL)
        os.close(worker.pidfd)


async def _exchange(channel: socket.socket, payload: bytes) -> bytes | None:
    """Send one framed task and read the framed reply; None if the worker hung up."""
    data = memoryview(HEADER.pack(len(payload)) + payload)
    while data:
        try:
            data = data[channel.send(data) :]
        except BlockingIOError:
            await anyio.wait_writable(channel)
        except OSError:
            return None
    header = await _receive(channel, HEADER.size)
    if header is None:
        return None
    return await _receive(channel, HEADER.unpack(header)[0])


async def _receive(channel: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = channel.recv(min(n - len(buf), 1 << 20))
        except BlockingIOError:
            await anyio.wait_readable(channel)
            continue
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _job_env(job: Job, socket_path: Path) -> dict[str, str]:
    env = dict(job.env or {})
    env["PHXQ_JOB_ID"] = str(job.id)
    env["PHXQ_ATTEMPT"] = str(job.attempts + 1)
    env["PHXQ_SOCKET"] = str(socket_path)
    return env
