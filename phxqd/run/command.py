"""Run one command job as a subprocess, and stop it (with all it spawned) when told.

Each job gets its own session and process group (`start_new_session=True`, never
`preexec_fn`), its log file as stdout and stderr directly (no pipe through the daemon, so a
daemon restart cannot SIGPIPE it), and a pidfd to wait on: the event loop learns of the exit
without SIGCHLD handlers, helper threads, or a `waitpid(-1)` that would steal other exits.
How many jobs run at once is the dispatcher's business, not this module's.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from phxqd.model import Job
from phxqd.run import output, spawn
from phxqd.run.attempt import Outcome, Stop, command_env, describe
from phxqd.run.output import PUBLISH_AFTER, Output, Scratches
from phxqd.run.proctree import Child, boot_ticks, create_time, kill_tree
from phxqd.settings import Settings

#: PATH lookups: (name, PATH, cwd) -> (resolved path, monotonic time looked up)
_found: dict[tuple[str, str, str | None], tuple[str, float]] = {}
#: seconds a lookup is trusted (a program installed meanwhile is found after this)
FOUND_FOR = 1.0


def find_program(name: str, env: dict[str, str], cwd: str | None) -> str | None:
    """Where execvpe would find `name`: the first executable file of that name in PATH.

    The kernel's own search (one failed execve per PATH entry before the right one) costs
    more than the rest of a spawn on a long PATH, so phxqd looks it up itself and keeps
    the answer a second. None: let the exec find it (or say why it cannot).
    """
    if "/" in name or not name:
        return None
    path = env.get("PATH", os.defpath)
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
    settings: Settings,
    stop: Stop,
    started: Callable[[int | None, float | None], Awaitable[None]],
) -> Outcome:
    """Run one attempt of `job` to its end, a timeout, or `stop`.

    `started` is awaited once the process exists (or failed to), so the journal records the
    pid before the job can finish. If the caller itself is cancelled (daemon shutdown), the
    process tree is killed before the cancellation propagates. Output goes to the job's log,
    or a scratch file that becomes it (see `output`). With `log_max_bytes` (as it is when
    the job starts), the log is trimmed to about that size every second while the job runs
    and once more at its end. `kill_grace` is read when the job is stopped: a reload
    meanwhile counts.
    """
    socket, log_cap = settings.socket, settings.log_max_bytes
    env = command_env(job, socket)
    out: Output | None = None
    try:
        out = Output(log_path, scratches, ran_before=job.started_at is not None)
        try:
            before = boot_ticks()
            proc = _spawn(job, out.fd, env)
            ticks = before if boot_ticks() == before else None
        finally:
            os.close(out.fd)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte (jobs journaled before
        # submit refused them)
        if out is not None:
            out.end()
        await started(None, None)
        where = f" (cwd {job.cwd})" if job.cwd else ""
        why = e.strerror if isinstance(e, OSError) else str(e)
        return Outcome(None, f"cannot start {job.argv[0]!r}{where}: {why}", retryable=False)

    pidfd = os.pidfd_open(proc.pid)
    try:
        await started(proc.pid, create_time(proc.pid, ticks))
        timeout = job.timeout if job.timeout is not None else float("inf")
        with anyio.move_on_after(timeout) as timer, stop.scope:
            await _wait_exit(pidfd, out, log_cap)
        if timer.cancelled_caught or stop.scope.cancelled_caught:
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
        await trim_log_soon(log_path, log_cap)

    if stop.reason is not None:
        return Outcome(code, f"{stop.reason} ({describe(code)})", cancelled=True)
    if timer.cancelled_caught:
        return Outcome(code, f"timed out after {job.timeout:g}s ({describe(code)})")
    return Outcome(code, None if code == 0 else describe(code))


def _spawn(job: Job, log_fd: int, env: dict[str, str]) -> Child:
    """Spawn the job's program, found in PATH by phxqd (looked up again if it moved)."""
    program = find_program(job.argv[0], env, job.cwd)
    try:
        return _start(job, program, log_fd, env)
    except FileNotFoundError:
        if program is None:
            raise
        _found.clear()  # it moved: look again
        return _start(job, None, log_fd, env)


def _start(job: Job, program: str | None, log_fd: int, env: dict[str, str]) -> Child:
    """glibc's posix_spawn (see run/spawn.py), else Popen: for a program not found in PATH,
    Popen's own search and its error are kept."""
    path = program if program is not None else (job.argv[0] if "/" in job.argv[0] else None)
    if spawn.AVAILABLE and path is not None:
        return spawn.Spawned(spawn.spawn(path, job.argv, job.cwd, log_fd, env))
    return _popen(job, program, log_fd, env)


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


async def _wait_exit(pidfd: int, out: Output, log_cap: int | None) -> None:
    """Until the job's process exits: its scratch output is published once it has run
    PUBLISH_AFTER, and with `log_cap` its log is trimmed every TRIM_EVERY seconds."""
    if out.scratch is not None:
        with anyio.move_on_after(PUBLISH_AFTER):
            await anyio.wait_readable(pidfd)
            return
        out.publish()
    if log_cap is None:
        await anyio.wait_readable(pidfd)
        return
    while True:
        with anyio.move_on_after(TRIM_EVERY):
            await anyio.wait_readable(pidfd)
            return
        await trim_log_soon(out.log_path, log_cap)


#: seconds between two looks at a running job's log size
TRIM_EVERY = 1.0


async def trim_log_soon(path: Path, cap: int) -> None:
    """Trim in a thread, but only when needed: a stat is cheap, a thread hop per job is not."""
    if output.over_cap(path, cap):
        await anyio.to_thread.run_sync(output.trim_log, path, cap)
