"""Jobs' output files and their limits, in one place: where a job writes before it has a
log (scratch files), when and how that output becomes its log, and the cap on a log's size.

Standard library only: the Python worker (`child`) imports it too, under whatever
interpreter the config names.

Creating a file cost more than spawning `true`: on ext4 it is an inode allocation (here,
without a journal, a scan past every inode deleted in the last 12 hours; with one, a wait
behind the daemon's own fdatasyncs), and it held the event loop. So a job whose log does
not exist yet (its first attempt) writes into a scratch file instead, which becomes the
job's log (a hard link, no new inode, `publish`) when the job printed something, or has run
`PUBLISH_AFTER` (so `logs --follow` sees a long job's output as it comes).

A command's scratch file (`Scratches`, `.cmd-PID-N.out`) is made once and reused while its
jobs leave it empty; it is also published if it is still held open by some process when
the job has ended. That last check is what makes reuse safe: a descendant that escaped the
job's session still holds its stdout, and whatever it writes later must land in that job's
log, never in another's. The job gets its own open file description of the scratch file
(not a copy of phxqd's), so the kernel counts it as a writer; phxqd asks for a write lease
(F_SETLEASE), which the kernel grants only when no one else has the file open. Anything
but a grant counts as held, so the file is published rather than reused.

A Python worker has one scratch file of its own (`LogSink`, `.worker-PID.out`), in which
one job at a time writes; what a dead worker left in it goes to the job it ran (`salvage`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path

#: seconds after which a running job's scratch output is published as its log (commands
#: and callables alike)
PUBLISH_AFTER = 0.05
#: a log this much over its cap is left alone, so a trimmed log is not trimmed again at once
TRIM_SLACK = 4096

_PREFIX = ".cmd-"
_SUFFIX = ".out"


def publish(scratch: str, log_path: str | Path) -> bool:
    """Give the output in `scratch` its job's log name: a hard link (no copy, no new
    inode; the caller removes the scratch name). If the log exists already (made
    meanwhile by someone else), what `scratch` holds is appended to it instead: False."""
    try:
        os.link(scratch, log_path)
    except FileExistsError:
        with open(log_path, "ab") as out, open(scratch, "rb") as src:
            out.write(src.read())
        return False
    return True


class Scratch:
    """One scratch file: its name, and a read-only descriptor phxqd keeps for the lease
    test (read-only, so that phxqd itself is not counted as a writer)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def open_for_job(self) -> int:
        """A new open file description for the job's stdout and stderr (see module doc)."""
        return os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def empty(self) -> bool:
        return os.fstat(self.fd).st_size == 0

    def held(self) -> bool:
        """Whether any process other than phxqd has the file open."""
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError:
            return True  # EAGAIN: someone has it open; anything else: cannot tell
        fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False

    def close(self) -> None:
        os.close(self.fd)


class Scratches:
    """The scratch files of one logs directory: those free for the next job, and how a
    used one is either taken back or published as a job's log."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.free: list[Scratch] = []
        self._made = 0

    def take(self) -> Scratch:
        if self.free:
            return self.free.pop()
        while True:
            self._made += 1
            name = f"{_PREFIX}{os.getpid()}-{self._made}{_SUFFIX}"
            with contextlib.suppress(FileExistsError):  # left by an earlier daemon's pid
                return Scratch(str(self.directory / name))

    def give_back(self, scratch: Scratch, log_path: Path) -> bool:
        """The job has ended: keep the file for the next job if it is empty and nobody
        holds it, else publish it as the job's log. True if it was published."""
        if not scratch.held() and scratch.empty():
            self.free.append(scratch)
            return False
        self.publish(scratch, log_path)
        return True

    def publish(self, scratch: Scratch, log_path: Path) -> None:
        """Make the scratch file the job's log; it is never used again as a scratch file.

        If the log was made meanwhile by someone else, what the scratch file holds is
        appended to it (output written after that is lost: it goes to an unnamed file)."""
        publish(scratch.path, log_path)
        os.unlink(scratch.path)
        scratch.close()

    def close(self) -> None:
        """phxqd is stopping: the free scratch files go."""
        for scratch in self.free:
            with contextlib.suppress(OSError):
                os.unlink(scratch.path)
            scratch.close()
        self.free.clear()


class Output:
    """Where one attempt of a command writes: its log if that exists (an earlier attempt
    wrote it), else a scratch file. `fd` is the job's, to be closed once it is spawned.
    A job that never ran (`ran_before` false) has no log: the look for it is skipped."""

    def __init__(self, log_path: Path, scratches: Scratches, ran_before: bool = True) -> None:
        self.log_path = log_path
        self._scratches = scratches
        self.scratch: Scratch | None = None
        fd = _open_existing(log_path) if ran_before else None
        if fd is None:
            self.scratch = scratches.take()
            try:
                fd = self.scratch.open_for_job()
            except OSError:
                scratches.give_back(self.scratch, log_path)
                raise
        self.fd = fd

    def publish(self) -> None:
        """Give the output its real name now (the job runs on)."""
        if self.scratch is not None:
            self._scratches.publish(self.scratch, self.log_path)
            self.scratch = None

    def end(self) -> bool:
        """The job's processes are gone (or should be): whether its log file exists now."""
        if self.scratch is None:
            return True
        scratch, self.scratch = self.scratch, None
        return self._scratches.give_back(scratch, self.log_path)


def _open_existing(path: Path) -> int | None:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        return None


def remove_leftovers(directory: Path) -> int:
    """Remove scratch files left by daemons that no longer run (killed, say); how many.

    What they hold is lost: the output of a job whose daemon was killed within
    `PUBLISH_AFTER` of the job's start (the attempt is reaped and retried). Files of a
    live pid are kept (a second daemon sharing the logs directory)."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            pid = _owner(entry.name)
            if pid is None or pid == os.getpid() or _alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


def _owner(name: str) -> int | None:
    """The pid in a scratch file's name, `.cmd-PID-N.out`; None for any other name."""
    if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
        return None
    pid, _, _ = name[len(_PREFIX) : -len(_SUFFIX)].partition("-")
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_scratch_path(log_dir: str, pid: int) -> str:
    """Where worker `pid` writes the output of jobs that have no log file yet (phxqd
    salvages it into the job's log if the worker dies)."""
    return os.path.join(log_dir, f".worker-{pid}.out")


def salvage(scratch: str, log_path: str | Path) -> None:
    """A worker died: what its scratch file holds belongs to the job it ran; the file goes."""
    with contextlib.suppress(OSError):
        if os.stat(scratch).st_size > 0:
            publish(scratch, log_path)
    with contextlib.suppress(OSError):
        os.unlink(scratch)


class LogSink:
    """In a Python worker: the file a job's stdout and stderr go to, its log if it exists,
    else the worker's scratch file, published as the log once it holds something and the
    job ended, or the job has run `PUBLISH_AFTER` (`watch`, a thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scratch: int | None = None
        self.scratch_name = ""
        #: while a job writes into the scratch file: its log path and when it started
        self.pending: tuple[str, float] | None = None

    def open(self, log_path: str) -> int:
        """An fd for the job's output; the caller must not close it (see `close`)."""
        try:
            return os.open(log_path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            pass
        with self.lock:
            if self.scratch is None:
                self.scratch_name = worker_scratch_path(os.path.dirname(log_path), os.getpid())
                self.scratch = os.open(
                    self.scratch_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600
                )
            self.pending = (log_path, time.monotonic())
            return self.scratch

    def close(self, fd: int) -> None:
        """The job ended: publish its scratch output if it wrote any."""
        if fd != self.scratch:
            os.close(fd)
            return
        with self.lock:
            if self.pending is not None and os.fstat(fd).st_size > 0:
                self._publish()
            if self.pending is None:  # published: the scratch file is the job's log now
                os.unlink(self.scratch_name)
                os.close(fd)
                self.scratch = None
            self.pending = None

    def remove(self) -> None:
        """The worker is leaving: its scratch file goes too."""
        with self.lock:
            if self.scratch is not None:
                os.unlink(self.scratch_name)
                os.close(self.scratch)
                self.scratch = None

    def watch(self) -> None:
        """A thread's loop: give a long job's output its real name."""
        while True:
            time.sleep(PUBLISH_AFTER / 2)
            self.publish_if_slow()

    def publish_if_slow(self) -> None:
        with self.lock:
            if self.pending is not None and time.monotonic() - self.pending[1] >= PUBLISH_AFTER:
                self._publish()

    def _publish(self) -> None:
        assert self.pending is not None and self.scratch is not None
        if not publish(self.scratch_name, self.pending[0]):
            # appended to a log made meanwhile: further output goes on into the scratch file
            os.ftruncate(self.scratch, 0)
            return
        self.pending = None


def over_cap(path: Path, cap: int) -> bool:
    """Whether a log is enough over `cap` to be trimmed: a stat, cheap enough to ask
    often (trimming itself is for a thread)."""
    try:
        return path.stat().st_size > cap + TRIM_SLACK
    except FileNotFoundError:
        return False


def trim_log(path: Path, cap: int) -> None:
    """Keep the first and the last half of `cap` bytes of a log, and say what was dropped.

    The job writes its log itself (O_APPEND), so the daemon cannot stop it from growing;
    it cuts it back instead: the head shows how the job started, the tail how it ended.
    Output written during the cut itself may be lost; the marker says output was dropped.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size <= cap + TRIM_SLACK:
        return
    head, tail = cap // 2, cap - cap // 2
    with open(path, "r+b") as f:
        f.seek(size - tail)
        end = f.read(tail)
        f.truncate(head)
        f.seek(head)
        marker = f"\n[phxq: {size - head - len(end)} bytes of output dropped here]\n"
        f.write(marker.encode() + end)
