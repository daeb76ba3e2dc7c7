"""Run one command job as a subprocess, and stop it (with all it spawned) when told.

Each job gets its own session and process group (`start_new_session=True`, never
`preexec_fn`), its log file as stdout and stderr directly (no pipe through the daemon, so a
daemon restart cannot SIGPIPE it), and a pidfd to wait on: the event loop learns of the exit
without SIGCHLD handlers, helper threads, or a `waitpid(-1)` that would steal other exits.
How many jobs run at once is the dispatcher's business, not this module's.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from phxqd.model import Job
from phxqd.run import output, spawn
from phxqd.run.attempt import (
    Outcome,
    Stop,
    command_env,
    describe,
    exec_env,
    job_env,
    program_path,
)
from phxqd.run.output import PUBLISH_AFTER, Output, Scratches
from phxqd.run.proctree import Child, boot_ticks, create_time, kill_tree, spawned_between
from phxqd.settings import Settings

#: PATH lookups: (name, PATH, cwd) -> (resolved path, monotonic time looked up)
_found: dict[tuple[str, str, str | None], tuple[str, float]] = {}
#: seconds a lookup is trusted (a program installed meanwhile is found after this)
FOUND_FOR = 1.0


def find_program(name: str, path: str, cwd: str | None) -> str | None:
    """Where execvpe would find `name`: the first executable file of that name in PATH.

    The kernel's own search (one failed execve per PATH entry before the right one) costs
    more than the rest of a spawn on a long PATH, so phxqd looks it up itself and keeps
    the answer a second. None: let the exec find it (or say why it cannot).
    """
    if "/" in name or not name:
        return None
    key = (name, path, cwd)
    hit = _found.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[1] < FOUND_FOR:
        return hit[0]
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if not os.path.isabs(candidate) and cwd is not None:
            candidate = os.path.join(cwd, candidate)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            if len(_found) > 1000:
                _found.clear()
            _found[key] = (candidate, now)
            return candidate
    return None


async def run_command(
    job: Job,
    log_path: Path,
    scratches: Scratches,
    spawners: spawn.Spawners,
    settings: Settings,
    stop: Stop,
    started: Callable[[int | None, float | None], None],
) -> Outcome:
    """Run one attempt of `job` to its end, a timeout, or `stop`.

    The process is made by `spawners` (in the loop, or a thread). `started` is called
    once it exists (or failed to), so the journal records the pid before the job can
    finish. If the caller itself is cancelled (daemon shutdown), the process tree is
    killed before the cancellation propagates. Output goes to the job's log, or a scratch
    file that becomes it (see `output`). With `log_max_bytes` (as it is when the job
    starts), the log is trimmed to about that size every second while the job runs and
    once more at its end. `kill_grace` is read when the job is stopped: a reload
    meanwhile counts.
    """
    socket, log_cap = settings.socket, settings.log_max_bytes
    env = job_env(job, socket)
    out: Output | None = None
    try:
        out = Output(log_path, scratches, ran_before=job.started_at is not None)
        try:
            proc, started_at = await spawners.call(
                functools.partial(_spawn, job, out.fd, env), (job.argv[0], job.cwd)
            )
        finally:
            os.close(out.fd)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte (jobs journaled before
        # submit refused them)
        if out is not None:
            out.end()
        started(None, None)
        where = f" (cwd {job.cwd})" if job.cwd else ""
        why = e.strerror if isinstance(e, OSError) else str(e)
        return Outcome(None, f"cannot start {job.argv[0]!r}{where}: {why}", retryable=False)

    pidfd = os.pidfd_open(proc.pid)
    try:
        started(proc.pid, started_at)
        timed_out = await _wait_exit(pidfd, out, log_cap, job.timeout, stop)
        if timed_out or stop.reason is not None:
            with anyio.CancelScope(shield=True):
                await kill_tree(proc, pidfd, settings.kill_grace, (job.id, socket))
        code = proc.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await kill_tree(proc, pidfd, settings.kill_grace, (job.id, socket))
        raise
    finally:
        os.close(pidfd)
        logged = out.end()
    if log_cap is not None and logged:
        # Shielded: the process is reaped, so a cancel landing here (a stop) would lose
        # its outcome, and a job that exited 0 would run again. The thread call's own
        # start is a checkpoint, and the trim is short.
        with anyio.CancelScope(shield=True):
            await trim_log_soon(log_path, log_cap)

    if stop.reason is not None:
        return Outcome(code, f"{stop.reason} ({describe(code)})", cancelled=True)
    if timed_out:
        return Outcome(code, f"timed out after {job.timeout:g}s ({describe(code)})")
    return Outcome(code, None if code == 0 else describe(code))


def _spawn(job: Job, log_fd: int, own: dict[str, str]) -> tuple[Child, float | None]:
    """Spawn the job's program, found in PATH by phxqd (looked up again if it moved); the
    child and its start time (from the clock read around the spawn, see
    `spawned_between`; from /proc when the spawn took two clock ticks or more)."""
    program = find_program(job.argv[0], program_path(own), job.cwd)
    before = boot_ticks()
    try:
        child = _start(job, program, log_fd, own)
    except FileNotFoundError:
        if program is None:
            raise
        _found.clear()  # it moved: look again
        before = boot_ticks()
        child = _start(job, None, log_fd, own)
    return child, create_time(child.pid, spawned_between(before, boot_ticks()))


def _start(job: Job, program: str | None, log_fd: int, own: dict[str, str]) -> Child:
    """glibc's posix_spawn (see run/spawn.py), else Popen: for a program not found in PATH,
    Popen's own search and its error are kept."""
    path = program if program is not None else (job.argv[0] if "/" in job.argv[0] else None)
    if spawn.AVAILABLE and path is not None:
        return spawn.Spawned(spawn.spawn(path, job.argv, job.cwd, log_fd, exec_env(own)))
    return _popen(job, program, log_fd, command_env(own))


def _popen(
    job: Job, program: str | None, log_fd: int, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        job.argv,
        executable=program,
        stdin=subprocess.DEVNULL,
        stdout=log_fd,
        stderr=subprocess.STDOUT,
        cwd=job.cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
    )


class _Wake:
    """What `_wait_exit` sleeps on: the pidfd turning readable (the process exited), a
    stop request, or a timer. A bare future and callbacks: the anyio scopes and
    `wait_readable` this replaced were a third of phxqd's Python work per `true` job."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.exited = False
        self.future: asyncio.Future[None] = loop.create_future()

    def exit(self) -> None:
        self.exited = True
        self.wake()

    def wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    async def sleep(self, until: float) -> None:
        """Until woken, or the loop's clock reaches `until`."""
        timer = self.loop.call_at(until, self.wake) if until != math.inf else None
        try:
            await self.future
        finally:
            if timer is not None:
                timer.cancel()
        self.future = self.loop.create_future()


async def _wait_exit(
    pidfd: int, out: Output, log_cap: int | None, timeout: float | None, stop: Stop
) -> bool:
    """Until the job's process exits (False), its timeout passes (True) or it is asked to
    stop (False: `stop.reason` says so). Meanwhile its scratch output is published once it
    has run PUBLISH_AFTER, and with `log_cap` its log is trimmed every TRIM_EVERY seconds."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    deadline = now + timeout if timeout is not None else math.inf
    publish_at = now + PUBLISH_AFTER if out.scratch is not None else math.inf
    trim_at = now + TRIM_EVERY if log_cap is not None else math.inf
    wake = _Wake(loop)
    loop.add_reader(pidfd, wake.exit)
    stop.on_request = wake.wake
    try:
        while not wake.exited:
            if stop.reason is not None:
                return False
            now = loop.time()
            if now >= deadline:
                return True
            if now >= publish_at:
                out.publish()
                publish_at = math.inf
            if now >= trim_at and log_cap is not None:
                await trim_log_soon(out.log_path, log_cap)
                trim_at = loop.time() + TRIM_EVERY
                continue
            await wake.sleep(min(deadline, publish_at, trim_at))
        return False
    finally:
        stop.on_request = None
        loop.remove_reader(pidfd)


#: seconds between two looks at a running job's log size
TRIM_EVERY = 1.0


async def trim_log_soon(path: Path, cap: int) -> None:
    """Trim in a thread, but only when needed: a stat is cheap, a thread hop per job is not."""
    if output.over_cap(path, cap):
        await anyio.to_thread.run_sync(output.trim_log, path, cap)
