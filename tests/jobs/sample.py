"""Callables the tests submit: each behaves in one way a real job might."""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Any

import phxqctl


class PermanentFailure(Exception):
    """Matched by name: phxq does not retry it."""


def add(a: int, b: int, *, scale: int = 1) -> dict[str, Any]:
    print(f"adding {a} and {b}")
    return {"sum": (a + b) * scale, "pid": os.getpid(), "attempt": os.environ["PHXQ_ATTEMPT"]}


def fail(message: str) -> None:
    raise ValueError(message)


def fail_with_nul() -> None:
    """An exception whose message holds NUL (no job's arguments can carry one in)."""
    raise ValueError("a" + chr(0) + "b")


def fail_for_good() -> None:
    raise PermanentFailure("bad input, retrying cannot help")


def segfault() -> None:
    ctypes.string_at(0)


def hard_exit() -> None:
    os._exit(3)


def report_progress() -> int:
    phxqctl.progress(done=7, total=10, step="callable")
    return os.getpid()


def wait_for(path: str) -> None:
    import time

    while not os.path.exists(path):
        time.sleep(0.02)


def ignore_sigterm(ready: str, release: str) -> None:
    """A job that will not stop when asked: only SIGKILL (after kill_grace) ends it."""
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(ready, "w").close()
    while not os.path.exists(release):
        time.sleep(0.02)


def unstorable() -> object:
    return object()


def environ(name: str) -> str | None:
    """A variable of the worker's environment (set by the interpreter it was started with)."""
    return os.environ.get(name)


def stubborn(started: str) -> None:
    """Ignores SIGTERM, as a job busy in C code may seem to, says it has started, and
    runs until killed."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(started, "w"):
        pass
    while True:
        time.sleep(0.05)
