"""Snapshots encoded by a forked child, so that the event loop never stops for them.

Encoding a million jobs takes over a second (most of it turning each job into an array of
its fields), and every client waited that long: `bench/bench_stall.py` saw a status
request take 1.3 s. fork() gives a child a frozen copy of the daemon's memory in a few
milliseconds; the child encodes that copy, exactly the state of the moment, and writes it
to the temporary snapshot file while the parent goes on serving. Renaming the file into
place stays the parent's job, once the child has exited cleanly: a child outliving its
daemon could otherwise replace a newer snapshot with its older one. It cannot outlive it
anyway: it is killed when its parent dies (PR_SET_PDEATHSIG).

The price is memory: the pages the child touches are copied while it runs, and with
reference counts that is every page holding a job (bench_restart: 458 MiB beside a daemon
of 616 MiB holding 1.2 million jobs; Redis's BGSAVE makes the same trade). So the child
writes a chunk at a time and encodes jobs in place (snapshot.write_streamed): what it
allocates stays a chunk's worth. Jobs kept in their stored bytes (jobtable.Block) it
writes as those bytes, and the index's columns as the blocks' own (State.snapshot with
`joined=False`): after a restart, 13 MiB beside a daemon of 370 MiB. Should memory run
out meanwhile, the kernel's OOM killer takes the child first (oom_score_adj 1000): the
snapshot fails, is logged, and is tried again later, and the daemon lives on. Where fork
itself fails, the caller encodes in the loop as before.

The child has one thread, and the other threads' locks are as fork found them: it takes
none (no logging, no imports, no `sys.stderr`), only msgspec and the os module, and ends
with `os._exit`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import signal
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from phxqd.local import snapshot
from phxqd.local.state import Snapshot

PR_SET_PDEATHSIG = 1
#: what the daemon handles itself; in the child they must do their default (end it)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: the child yields the CPU to the event loop it was forked from
CHILD_NICENESS = 10
#: the OOM killer's first choice: the child, never the daemon
OOM_SCORE_ADJ = 1000


class Child:
    """A snapshot child, and whether it was reaped: once it was, its pid may be another
    process's, so it must never be killed after that."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.reaped = False

    def wait(self) -> None:
        """Wait for the child (blocking: run it in a thread); OSError if it failed."""
        _, status = os.waitpid(self.pid, 0)
        self.reaped = True
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise OSError(f"the snapshot process ended with status {code} (phxqd's log says why)")

    def kill(self) -> None:
        """End a child that is no longer wanted, and reap it (a moment: SIGKILL is at once)."""
        if self.reaped:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.reaped = True


def start(directory: Path, take: Callable[[], Snapshot]) -> Child | None:
    """Fork a child that writes `take()` as the temporary snapshot in `directory`, or None
    when the system cannot fork now."""
    parent = os.getpid()
    prctl = _prctl()  # looked up before the fork: the child calls no dynamic loader
    try:
        with warnings.catch_warnings():  # 3.12+ warns of fork in a process with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        return None
    if pid == 0:
        _child(parent, prctl, directory, take)
    return Child(pid)


def _child(
    parent: int, prctl: Callable[..., int], directory: Path, take: Callable[[], Snapshot]
) -> NoReturn:
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # the parent's: a signal here must not reach its loop
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # it died before prctl took effect
            os._exit(1)
        with contextlib.suppress(OSError):  # a sandbox may forbid it: snapshot anyway
            _first_to_go_when_memory_runs_out()
        os.nice(CHILD_NICENESS)
        # Client connections, the listening socket, the journal, the state directory's
        # lock: none of them the child's to hold, and a client must see its connection
        # end when the parent closes it. (Last of the set-up: once they are closed, the
        # child's niceness and OOM score are set, which tests/test_forked.py relies on.)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        gc.disable()  # a collection would touch (and copy) every object for nothing
        snapshot.write_streamed(directory, take())
        code = 0
    except BaseException as e:
        message = f"phxqd: the snapshot process failed: {e!r}\n"
        with contextlib.suppress(OSError):
            os.write(2, message.encode(errors="replace"))
    finally:
        os._exit(code)


def _first_to_go_when_memory_runs_out() -> None:
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
    try:
        os.write(fd, str(OOM_SCORE_ADJ).encode())
    finally:
        os.close(fd)


@functools.cache
def _prctl() -> Callable[..., int]:
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl
