"""Process trees: stopping a job's processes (its group, its descendants, and whatever
inherited its PHXQ_JOB_ID), killing leftovers of an earlier daemon, and a process's
start time (what tells a pid's process from a later one with the same pid)."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from pathlib import Path
from typing import Protocol

import anyio
import psutil


class Child(Protocol):
    """A job's process: a Popen, or a `spawn.Spawned`."""

    pid: int

    def wait(self) -> int: ...


async def kill_tree(proc: Child, pidfd: int, grace: float, mark: Mark | None = None) -> None:
    """SIGTERM the job's process group and its descendants; SIGKILL what is left after grace.

    Descendants are found twice over: by parentage (a child that left the group with
    setsid), and by the PHXQ_JOB_ID every job process inherits (a double fork, whose
    parent is gone).
    """
    others = _descendants(proc.pid) + marked(mark)
    signal_tree(proc.pid, others, signal.SIGTERM)
    with anyio.move_on_after(grace):
        await anyio.wait_readable(pidfd)
    signal_tree(proc.pid, others, signal.SIGKILL)
    await anyio.wait_readable(pidfd)
    proc.wait()


#: (job id, socket path): the PHXQ_JOB_ID and PHXQ_SOCKET a job's processes inherit. Both,
#: because two daemons (a user's and the system's) number their jobs alike.
Mark = tuple[int, Path]


def marked(mark: Mark | None) -> list[psutil.Process]:
    """Processes that inherited this job's PHXQ_JOB_ID and PHXQ_SOCKET, wherever they moved
    to (reading other processes' environments needs root or the same user)."""
    if mark is None:
        return []
    job_id, sock = str(mark[0]), str(mark[1])
    me, out = os.getpid(), []
    for p in psutil.process_iter():
        try:
            env = p.environ()
        except psutil.Error:
            continue
        if p.pid != me and env.get("PHXQ_JOB_ID") == job_id and env.get("PHXQ_SOCKET") == sock:
            out.append(p)
    return out


def kill_leftover(pid: int, create_time: float | None, mark: Mark | None = None) -> bool:
    """Kill the process group of a job from an earlier daemon life, if it still lives.

    The pid alone could have been reused by an unrelated process: the start time recorded
    in the journal must match too. Processes that carry the job's PHXQ_JOB_ID are killed
    whether the leader still lives or not (it may have exited and left them behind).
    """
    strays = marked(mark)
    signal_tree(None, strays, signal.SIGKILL)
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return bool(strays)
    except psutil.Error:
        return bool(strays)
    signal_tree(pid, _descendants(pid), signal.SIGKILL)
    return True


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def signal_tree(pgid: int | None, others: list[psutil.Process], sig: signal.Signals) -> None:
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for p in others:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)  # psutil checks the process is still the one it found


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: seconds a boot time read is used for: it moves with the wall clock
_BOOT_TIME_TTL = 10.0


@functools.lru_cache(maxsize=1)
def _boot_time(period: int) -> float:
    """psutil's boot time, read once per `_BOOT_TIME_TTL` period of the monotonic clock
    (the period is the cache key, so a new period reads it again)."""
    return float(psutil.boot_time())


def create_time(pid: int, start_ticks: float | None = None) -> float | None:
    """The start time of process `pid` as psutil computes it (seconds since the epoch),
    read straight from /proc: psutil.Process() reads more files than this needs, and it
    is paid for every job started. `start_ticks`, when the caller knows them (see
    `spawned_between`), spare the read."""
    if start_ticks is None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            start_ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
        except (OSError, ValueError, IndexError):
            return None
    boot = _boot_time(int(time.monotonic() // _BOOT_TIME_TTL))
    return start_ticks / _CLOCK_TICKS + boot


def spawned_between(before: int, after: int) -> float | None:
    """The start of a process spawned between two `boot_ticks` reads, in ticks, when they
    tell it closely enough: their tick, or half way between two adjacent ticks, off by
    half a tick (5 ms) at most, half of what `kill_leftover` allows. None: read /proc
    (a spawn that spanned two ticks or more: a loaded machine)."""
    if after == before:
        return before
    return before + 0.5 if after == before + 1 else None


def boot_ticks() -> int:
    """CLOCK_BOOTTIME in clock ticks: the clock and unit of a process's start time in
    /proc/PID/stat. Read before and after a spawn: the child (made in between) started
    in between (`spawned_between`). Reading /proc/PID/stat of a child that is still in
    its exec waits for the exec: it cost a third of a command's spawn, and one spawn in
    twenty spans a tick (100 per second) at load 2."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // (1_000_000_000 // _CLOCK_TICKS)
