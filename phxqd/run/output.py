"""Scratch files for the output of command jobs, so that no file is created per job.

Creating a file cost more than spawning `true`: on ext4 it is an inode allocation (here,
without a journal, a scan past every inode deleted in the last 12 hours; with one, a wait
behind the daemon's own fdatasyncs), and it held the event loop. A command whose log does
not exist yet (its first attempt) writes into a scratch file instead, made once and
reused while its jobs leave it empty. It becomes the job's log (a hard link, no new inode)
when the job printed something, has run `PUBLISH_AFTER` (so `logs --follow` sees a long
job's output as it comes), or is still held open by some process when the job has ended.

That last check is what makes reuse safe: a descendant that escaped the job's session
still holds its stdout, and whatever it writes later must land in that job's log, never
in another's. The job gets its own open file description of the scratch file (not a copy
of phxqd's), so the kernel counts it as a writer; phxqd asks for a write lease
(F_SETLEASE), which the kernel grants only when no one else has the file open. Anything
but a grant counts as held, so the file is published rather than reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

#: seconds after which a running job's scratch file is published as its log
PUBLISH_AFTER = 0.05

_PREFIX = ".cmd-"
_SUFFIX = ".out"


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
        try:
            os.link(scratch.path, log_path)
        except FileExistsError:
            with open(log_path, "ab") as out, open(scratch.path, "rb") as src:
                out.write(src.read())
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
