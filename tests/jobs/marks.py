"""Callables for the PostgreSQL cluster tests: each leaves a mark of having run."""

from __future__ import annotations

import os
import time


def mark(path: str) -> None:
    """Append this job's id and attempt to `path` (one write: whole lines, never torn)."""
    line = f"{os.environ['PHXQ_JOB_ID']} {os.environ['PHXQ_ATTEMPT']} {os.getppid()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def crowd(directory: str, seconds: float) -> int:
    """Be one of the jobs running in `directory` for `seconds`; how many were (with us)
    when we looked (a queue's limit must keep this at or under it)."""
    me = os.path.join(directory, os.environ["PHXQ_JOB_ID"])
    open(me, "w").close()
    try:
        seen = len(os.listdir(directory))
        time.sleep(seconds)
        return max(seen, len(os.listdir(directory)))
    finally:
        os.unlink(me)
