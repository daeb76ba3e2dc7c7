"""Persistent Python worker processes for callable jobs, each fed by a lane.

A worker (`python -m phxqd.run.child`) runs one call at a time and is reused, so a module is
imported once for many jobs. It is recycled after `worker_max_jobs` calls or once its RSS
passes `worker_max_rss`. These, the interpreter, its import paths and `kill_grace` are read
from the live `Settings` each time they are used, so a reload reaches the lanes at once.

A `Lane` is one worker in use, driven by one task: the dispatcher pushes jobs into it, and
it may send a few ahead of the one running (`AHEAD`, only while the lane's jobs are quick:
a job queued behind a long one would wait for it), so the worker never waits for phxqd
between two short jobs and phxqd handles many replies per wake-up. The worker says which
job it starts (see `phxqd.run.child`), so the lane always knows the one job a crash, a timeout
or a cancel concerns:

- the running job's timeout or cancel kills the worker (its whole process group);
- the worker dying (segfault, os._exit, OOM kill) fails the job it was running, one attempt;
- jobs sent ahead that had not started go to a fresh worker, their attempt not spent; a
  cancelled one is asked back (`Skip`) and ends without having run.

The lane reports starts and ends to its owner (the `Dispatcher`) in batches, one call per
batch of replies, so their journal records go in one append.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec
import psutil

from phxqd.model import Job
from phxqd.run import attempt, output, proctree
from phxqd.run.attempt import job_env
from phxqd.run.child import HEADER, Began, Done, FromWorker, Skip, Skipped, Task
from phxqd.settings import Settings

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(FromWorker)

#: how many jobs a lane may have sent to its worker at once (the running one included),
#: by how quick its jobs are: while the last one, and the one running so far, took less
#: than `seconds`, up to `depth`; else one. So a job waits at most ~40 ms behind quick
#: ones in a worker, and no-op calls go 32 to a write and a wake-up (half the daemon's
#: CPU per call of 8, bench_pool --compare).
AHEAD = ((0.001, 32), (0.005, 8))


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    channel: socket.socket
    pidfd: int
    create_time: float | None
    #: where it writes the output of jobs that have no log file yet
    scratch: str = ""
    #: calls sent to it, and whether it ever said it started one
    calls: int = 0
    began: bool = False
    retired: bool = False
    #: seconds its last job took, from its start to its reply
    last_run: float = math.inf


@dataclass
class Ticket:
    """One callable job handed to a lane."""

    job: Job
    stop: attempt.Stop
    log_path: Path
    frame: bytes
    #: asked to stop before it started: already reported as ended, a Skip sent; it stays
    #: in the lane until the worker confirms (or turns out to have started it: killed)
    dropped: bool = False
    #: monotonic time it started, once the worker said so
    started: float | None = None


@dataclass
class Start:
    """Report: the job started in worker `pid`."""

    job: Job
    pid: int | None
    create_time: float | None


@dataclass
class Ended:
    """Report: the job's attempt ended with `outcome`; or, if not `started`, it never ran
    (cancelled before it started, or to be dispatched again)."""

    job: Job
    stop: attempt.Stop
    outcome: attempt.Outcome
    started: bool = True


Report = Start | Ended


def _no_reports(reports: list[Report]) -> None:
    pass


@dataclass
class WorkerPool:
    #: the running queue's settings, changed in place by a reload: read (`python`,
    #: `pythonpath`, `worker_max_jobs`, `worker_max_rss`, `kill_grace`, `socket`) where they
    #: are used, never copied
    settings: Settings
    #: receives every batch of starts and ends
    report: Callable[[list[Report]], None] = _no_reports
    #: called when a lane ends (its slot is free)
    lane_ended: Callable[[], None] = lambda: None
    idle: list[Worker] = field(default_factory=list)
    lanes: list[Lane] = field(default_factory=list)
    #: workers started since phxqd did (for metrics)
    started: int = 0

    @property
    def busy(self) -> int:
        """Calls running now."""
        return sum(1 for lane in self.lanes if lane.running is not None)

    def lane_with_room(self, now: float) -> Lane | None:
        """The lane that can take another job and has the fewest, if any."""
        best, room = None, 0
        for lane in self.lanes:
            r = lane.room(now)
            if r > room:
                best, room = lane, r
        return best

    def new_lane(self, first_log: Path) -> Lane:
        """A lane on an idle worker, or on a new one (OSError if it cannot start)."""
        worker = self.idle.pop() if self.idle else self._spawn(first_log)
        lane = Lane(self, worker)
        self.lanes.append(lane)
        return lane

    def ticket(self, job: Job, stop: attempt.Stop, log_path: Path) -> Ticket:
        assert job.call is not None
        task = Task(
            job.id,
            job.attempts + 1,
            job.call.func,
            job.call.args,
            job.call.kwargs,
            str(log_path),
            job.cwd,
            job_env(job, self.settings.socket),
        )
        data = _encoder.encode(task)
        return Ticket(job, stop, log_path, HEADER.pack(len(data)) + data)

    def flush(self) -> None:
        """Send what was pushed to the lanes."""
        for lane in self.lanes:
            if lane.out:
                lane.flush()

    def close(self) -> None:
        """Let every idle worker go: closing its channel makes it exit."""
        while self.idle:
            self._retire(self.idle.pop())

    def _spawn(self, first_log: Path) -> Worker:
        ours, theirs = socket.socketpair()
        here = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [here, *self.settings.pythonpath, *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PHXQ_WORKER_FD"] = str(theirs.fileno())
        # the first job's log gets the worker's own start-up errors (a missing msgspec...)
        log = os.open(first_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                [self.settings.python, "-m", "phxqd.run.child"],
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
        return Worker(
            proc,
            ours,
            os.pidfd_open(proc.pid),
            proctree.create_time(proc.pid),
            output.worker_scratch_path(str(first_log.parent), proc.pid),
        )

    def _keep(self, worker: Worker) -> bool:
        if worker.calls >= self.settings.worker_max_jobs:
            return False
        max_rss = self.settings.worker_max_rss
        if max_rss is not None:
            try:
                return int(psutil.Process(worker.proc.pid).memory_info().rss) <= max_rss
            except psutil.Error:
                return False
        return True

    def _retire(self, worker: Worker, healthy: bool = True) -> None:
        """A healthy worker exits on EOF of its channel; any other is killed with its group.

        Not waited for here (that could block the event loop): subprocess reaps it later.
        """
        if worker.retired:
            return
        worker.retired = True
        worker.channel.close()
        if not healthy:
            if worker.proc.poll() is None:
                proctree.signal_tree(worker.proc.pid, [], signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.unlink(worker.scratch)  # a healthy one removes its own
        os.close(worker.pidfd)


class Lane:
    """One worker in use and the jobs sent to it, in order; see the module docstring."""

    def __init__(self, owner: WorkerPool, worker: Worker) -> None:
        self.pool = owner
        self.worker = worker
        self.inflight: deque[Ticket] = deque()
        self.running: Ticket | None = None
        self.out = bytearray()
        self.buf = bytearray()
        self.poked = False
        self.scope: anyio.CancelScope | None = None
        self.deadline = math.inf
        self.accepting = worker.calls < owner.settings.worker_max_jobs

    def room(self, now: float) -> int:
        if not self.accepting:
            return 0
        limit, running = 1, self.running
        so_far = 0.0 if running is None or running.started is None else now - running.started
        for seconds, depth in AHEAD:
            if self.worker.last_run < seconds and so_far < seconds:
                limit = depth
                break
        return limit - len(self.inflight)

    def push(self, ticket: Ticket) -> None:
        """Queue a job for the worker (it starts once those before it are done); sent by
        `flush`, so that jobs pushed together go in one write."""
        self.inflight.append(ticket)
        ticket.stop.on_request = self.poke
        self.worker.calls += 1
        if self.worker.calls >= self.pool.settings.worker_max_jobs:
            self.accepting = False
        self.out += ticket.frame

    def poke(self) -> None:
        """A job of this lane was asked to stop: the lane task looks at once."""
        self.poked = True
        if self.scope is not None:
            self.scope.cancel()

    async def run(self) -> None:
        """Drive the worker until no job is left, then give it back (or retire it)."""
        healthy = True
        try:
            while self.inflight:
                healthy = await self._step()
        except BaseException as e:
            healthy = False
            if not self.worker.retired:
                with anyio.CancelScope(shield=True):
                    await proctree.kill_tree(
                        self.worker.proc, self.worker.pidfd, self.pool.settings.kill_grace
                    )
            if not isinstance(e, Exception):
                raise  # the daemon is going down at once: nothing more to report
            # a bug of ours must cost one attempt, never the daemon
            reports: list[Report] = []
            if self.running is not None and not self.running.dropped:
                error = attempt.Outcome(None, f"internal error in phxqd: {e!r}")
                reports.append(Ended(self.running.job, self.running.stop, error))
                self.inflight.remove(self.running)
            reports += [
                Ended(t.job, t.stop, attempt.Outcome(None), False)
                for t in self.inflight
                if not t.dropped
            ]
            self.inflight.clear()
            self.pool.report(reports)
        finally:
            self.pool.lanes.remove(self)
            if healthy and self.pool._keep(self.worker):
                self.pool.idle.append(self.worker)
            else:
                self.pool._retire(self.worker, healthy)
            self.pool.lane_ended()

    async def _step(self) -> bool:
        """Wait for replies, a stop request or the running job's deadline; act on them.
        False once the worker is gone and no job is left for a new one."""
        channel = self.worker.channel
        with anyio.CancelScope(deadline=self.deadline) as scope:
            self.scope = scope
            if self.poked:
                scope.cancel()
            if self.out:
                # Not only writable: a worker blocked sending a large reply reads nothing.
                with anyio.move_on_after(0.01):
                    await anyio.wait_writable(channel)
                self.flush()
            else:
                await anyio.wait_readable(channel)
        self.scope = None
        if self.poked:
            self.poked = False
            return await self._stops()
        if scope.cancelled_caught:
            return await self._timed_out()
        try:
            chunk = channel.recv(1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        if not chunk:
            return await self._died()
        self.buf += chunk
        self._replies()
        return True

    def flush(self) -> None:
        try:
            sent = self.worker.channel.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # the worker is gone: the lane task finds out when it reads
        del self.out[:sent]

    def _replies(self) -> None:
        reports: list[Report] = []
        buf, now = self.buf, time.monotonic()
        while len(buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(buf)
            if len(buf) < HEADER.size + length:
                break
            msg = _decoder.decode(buf[HEADER.size : HEADER.size + length])
            del buf[: HEADER.size + length]
            if isinstance(msg, Done):
                self._done(msg, now, reports)
            elif isinstance(msg, Began):
                self._begin(self._find(msg.job_id), now, reports)
            elif isinstance(msg, Skipped):
                self.inflight.remove(self._find(msg.job_id))  # dropped: reported already
        if reports:
            self.pool.report(reports)

    def _done(self, msg: Done, now: float, reports: list[Report]) -> None:
        t = self.running
        assert t is not None and t.job.id == msg.job_id and t.started is not None, msg
        self.inflight.remove(t)
        self.running, self.deadline = None, math.inf
        self.worker.last_run = now - t.started
        if t.dropped:
            pass  # it ran to its end before the Skip came; it was reported as cancelled
        elif msg.ok:
            outcome = attempt.Outcome(0, None, result=msg.result)
        else:
            outcome = attempt.Outcome(1, msg.error, retryable=not msg.permanent)
        if not t.dropped:
            reports.append(Ended(t.job, t.stop, outcome))
        if self.pool.settings.worker_max_rss is not None and not self.pool._keep(self.worker):
            self.accepting = False
        if msg.next is not None:
            self._begin(self._find(msg.next), now, reports)

    def _begin(self, t: Ticket, now: float, reports: list[Report]) -> None:
        self.worker.began = True
        self.running, t.started = t, now
        timeout = t.job.timeout
        self.deadline = anyio.current_time() + timeout if timeout is not None else math.inf
        if not t.dropped:
            reports.append(Start(t.job, self.worker.proc.pid, self.worker.create_time))
        if t.stop.reason is not None:
            self.poked = True  # cancelled while it waited in the worker: kill it now

    def _find(self, job_id: int) -> Ticket:
        for t in self.inflight:
            if t.job.id == job_id:
                return t
        raise AssertionError(f"the worker named job {job_id}, which it was not sent")

    async def _stops(self) -> bool:
        """Jobs asked to stop: the running one by killing the worker; one that has not
        started ends at once, unrun (so a cancel does not wait for the job ahead of it),
        and the worker is told to skip it."""
        reports: list[Report] = []
        for t in self.inflight:
            if t.stop.reason is not None and t is not self.running and not t.dropped:
                t.dropped = True
                reports.append(Ended(t.job, t.stop, attempt.Outcome(None), False))
                data = _encoder.encode(Skip(t.job.id))
                self.out += HEADER.pack(len(data)) + data
        self.flush()
        if reports:
            self.pool.report(reports)
        running = self.running
        if running is None or running.stop.reason is None:
            return True
        code = await self._kill(running)
        if running.dropped:  # it started before the Skip came: killed, already reported
            return self._replace([])
        outcome = attempt.Outcome(
            code, f"{running.stop.reason} ({attempt.describe(code)})", cancelled=True
        )
        return self._replace([Ended(running.job, running.stop, outcome)])

    async def _timed_out(self) -> bool:
        running = self.running
        assert running is not None
        code = await self._kill(running)
        if running.dropped:
            return self._replace([])
        what = f"timed out after {running.job.timeout:g}s"
        outcome = attempt.Outcome(code, f"{what} ({attempt.describe(code)})")
        return self._replace([Ended(running.job, running.stop, outcome)])

    async def _kill(self, running: Ticket) -> int:
        w = self.worker
        with anyio.CancelScope(shield=True):
            await proctree.kill_tree(
                w.proc, w.pidfd, self.pool.settings.kill_grace, self._mark(running)
            )
        self._salvage(running)
        self.inflight.remove(running)
        self.running, self.deadline = None, math.inf
        return w.proc.wait()

    async def _died(self) -> bool:
        """The worker hung up: it died. It fails the job it ran, or, if it never started
        one (it cannot start at all?), the first job sent to it, so no job is retried on
        broken workers forever."""
        w = self.worker
        with anyio.CancelScope(shield=True):
            await anyio.wait_readable(w.pidfd)
        code = w.proc.wait()
        reports: list[Report] = []
        victim = self.running
        if victim is None and not w.began and self.inflight and not self.inflight[0].dropped:
            victim = self.inflight[0]
            reports.append(Start(victim.job, w.proc.pid, w.create_time))
        if victim is not None:
            self._salvage(victim)
            self.inflight.remove(victim)
            self.running, self.deadline = None, math.inf
            error = attempt.Outcome(code, f"the Python worker died: {attempt.describe(code)}")
            if not victim.dropped:
                reports.append(Ended(victim.job, victim.stop, error))
        return self._replace(reports)

    def _replace(self, reports: list[Report]) -> bool:
        """The worker is gone: jobs asked to stop end unstarted, the rest go to a new
        worker (in the same order). False: the lane has nothing left."""
        self.pool._retire(self.worker, healthy=False)
        left = deque[Ticket]()
        for t in self.inflight:
            if t.dropped:
                continue
            if t.stop.reason is not None:
                reports.append(Ended(t.job, t.stop, attempt.Outcome(None), False))
            else:
                left.append(t)
        self.inflight, self.out, self.buf = left, bytearray(), bytearray()
        if left:
            try:
                self.worker = self.pool._spawn(left[0].log_path)
            except OSError as e:
                error = f"cannot start {self.pool.settings.python}: {e.strerror}"
                for t in left:
                    reports.append(Start(t.job, None, None))
                    reports.append(Ended(t.job, t.stop, attempt.Outcome(None, error, False)))
                left.clear()
            else:
                self.worker.calls = len(left)
                for t in left:
                    self.out += t.frame
                self.flush()
        self.pool.report(reports)
        return bool(left)

    def _mark(self, t: Ticket) -> proctree.Mark:
        return (t.job.id, self.pool.settings.socket)

    def _salvage(self, t: Ticket) -> None:
        """Output a dead worker left in its scratch file belongs to the job it ran."""
        output.salvage(self.worker.scratch, t.log_path)
