"""One attempt of a job: the environment it runs in, the handle that stops it, and how
it ended. Shared by command jobs (`command`) and callables (`lanes`)."""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from phxqd.model import Job


@dataclass
class Outcome:
    """How an attempt ended. `error` is None only for a clean exit."""

    exit_code: int | None
    error: str | None = None
    #: False when running it again cannot help (the command does not exist)
    retryable: bool = True
    #: the job was stopped on request (cancel) rather than failing by itself
    cancelled: bool = False
    #: what a callable job returned
    result: Any = None


class Stop:
    """A handle to ask a running job to stop, and why. Whoever runs the job looks at
    `reason` and sets `on_request` to be told at once (a command's wait, a worker lane,
    the dispatcher for a job waiting for a slot)."""

    __slots__ = ("on_request", "reason")

    def __init__(self) -> None:
        self.reason: str | None = None
        self.on_request: Callable[[], None] | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        if self.on_request is not None:
            self.on_request()


def job_env(job: Job, socket: Path) -> dict[str, str]:
    """What a job's environment adds to its runner's: the job's own variables, then
    PHXQ_JOB_ID, PHXQ_ATTEMPT and PHXQ_SOCKET (which the job cannot override: they are how
    `phxqctl progress` finds its job, and how a stop finds a job's escaped processes).

    The one definition for both kinds of job: a command gets it over the daemon's
    environment (`command_env`), a callable over its worker's (the worker applies it
    before the call and takes it back after)."""
    env = dict(job.env or {})
    env["PHXQ_JOB_ID"] = str(job.id)
    env["PHXQ_ATTEMPT"] = str(job.attempts + 1)
    env["PHXQ_SOCKET"] = str(socket)
    return env


def command_env(own: dict[str, str]) -> dict[str, str]:
    """A command's whole environment: the daemon's, then the job's own (`job_env`)."""
    env = _daemon_env().copy()
    env.update(own)
    return env


class ExecEnv(NamedTuple):
    """`command_env` as exec takes it (`NAME=value` bytes), in two parts: the daemon's
    variables the job does not set (the same tuple for every job setting the same names,
    so a spawn can keep what it made of it: see spawn._environ) and the job's own."""

    inherited: tuple[bytes, ...]
    own: tuple[bytes, ...]

    def entries(self) -> list[bytes]:
        return [*self.inherited, *self.own]


def exec_env(own: dict[str, str]) -> ExecEnv:
    """The environment of a command (`command_env`) for exec, from the job's own variables
    (`job_env`): the daemon's are encoded once per set of names a job sets over them,
    since encoding all of them for each spawn cost the event loop 35 µs a job. ValueError
    for a NUL byte, at which exec would cut the variable short."""
    return ExecEnv(_inherited(frozenset(own)), tuple(map(_variable, own.keys(), own.values())))


def program_path(own: dict[str, str]) -> str:
    """The PATH a command is looked up in: its own, else the daemon's."""
    return own.get("PATH") or _daemon_env().get("PATH", os.defpath)


@functools.lru_cache(maxsize=64)
def _inherited(overridden: frozenset[str]) -> tuple[bytes, ...]:
    return tuple(_variable(k, v) for k, v in _daemon_env().items() if k not in overridden)


def _variable(name: str, value: str) -> bytes:
    data = os.fsencode(f"{name}={value}")
    if b"\0" in data:
        raise ValueError("embedded null byte")
    return data


@functools.cache
def _daemon_env() -> dict[str, str]:
    """The daemon's environment, copied once: it does not change while phxqd runs, and
    decoding it again costs more than a job's spawn is worth. Never changed: copied."""
    return dict(os.environ)


def describe(code: int) -> str:
    """'exited with status 3' or 'killed by SIGTERM', from a Popen return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"
