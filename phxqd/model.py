"""The nouns of phxq: what a job is, what it asks for, and where it stands.

These Structs are shared by the daemon, the journal and the client: a `Job` encoded as JSON
is exactly the job JSON of the contract (DESIGN.md), so there is one definition to keep in
step. This module imports nothing but msgspec (and the shared constants of phxqd.contract),
because phxqctl.Client imports it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

from phxqd.contract import DEFAULT_QUEUE as DEFAULT_QUEUE
from phxqd.contract import FINISHED as FINISHED
from phxqd.contract import STATUSES as STATUSES
from phxqd.contract import WAITING as WAITING
from phxqd.contract import spec_problem

#: Every status a job can have (phxqd.contract.STATUSES, which phxqctl reads without
#: msgspec). A Literal: msgspec then decodes every status to one shared string object,
#: where a `str` field would get a fresh copy per job: with a million jobs, 56 MB of heap
#: fragments. Spelled out because a type checker cannot read a Literal from a tuple; the
#: check below keeps the two the same.
Status = Literal["pending", "running", "retrying", "completed", "failed", "cancelled"]
if get_args(Status) != STATUSES:
    raise ImportError(f"model.Status {get_args(Status)} is not contract.STATUSES {STATUSES}")
DEFAULT_RETRIES = 3
#: (base, max, jitter) of the retry backoff when neither the job nor its queue says
DEFAULT_BACKOFF = (1.0, 60.0, 0.5)
#: a command exiting with this status fails at once, without retries (like EX_ in sysexits,
#: a number no common tool uses for a passing failure)
NO_RETRY_EXIT = 100


class Call(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """A Python callable job: `func` is "package.module:function"."""

    func: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)


class JobSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """What a submitter asks for: a command (`argv`) or a Python callable (`call`).
    Validated by the daemon before anything is written.

    Not tracked by the cyclic GC (nor are `Job`, `Call` and `SubmitResult`): a batch
    makes thousands of them, each would count towards the next collection, and none can
    be part of a reference cycle in practice (that would take a spec inside its own call
    arguments).
    """

    argv: list[str] = msgspec.field(default_factory=list)
    call: Call | None = None
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    key: str | None = None
    #: None: the queue's setting (config), else DEFAULT_RETRIES
    max_retries: int | None = None
    #: (base seconds, max seconds, jitter): delay = min(base * 2**(attempt-1), max) *
    #: (1 + jitter * random); None: the queue's setting, else the defaults
    backoff: tuple[float, float, float] | None = None
    #: run only after these jobs completed; cancelled if one of them fails or is cancelled
    after: list[int] = msgspec.field(default_factory=list)
    timeout: float | None = None
    delay: float | None = None
    run_at: float | None = None
    label: str | None = None
    cwd: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)


class Progress(msgspec.Struct, omit_defaults=True, gc=False):
    """What a running job last said about itself (`phxqctl progress`)."""

    updated_at: float
    percent: float | None = None
    step: str | None = None
    done: int | None = None
    total: int | None = None

    def fraction(self) -> float | None:
        """0..1 when the job said enough to know, else None."""
        if self.percent is not None:
            return max(0.0, min(self.percent / 100, 1.0))
        if self.done is not None and self.total:
            return max(0.0, min(self.done / self.total, 1.0))
        return None


class Job(msgspec.Struct, gc=False):
    """One job as the daemon knows it; its JSON form is the contract's job JSON.

    Times are Unix timestamps in seconds (float). `attempts` counts started runs. A daemon
    holds a million of these, so each is kept small: not tracked by the cyclic garbage
    collector (a Job refers to no other Job), argv a tuple, env None when empty.
    """

    id: int
    argv: tuple[str, ...]
    queue: str
    priority: int
    status: Status
    created_at: float
    run_at: float
    key: str | None = None
    label: str | None = None
    cwd: str | None = None
    env: dict[str, str] | None = None
    timeout: float | None = None
    max_retries: int = DEFAULT_RETRIES
    backoff: tuple[float, float, float] | None = None
    after: tuple[int, ...] | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    pid: int | None = None
    pid_started: float | None = None
    progress: Progress | None = None
    call: Call | None = None
    #: what a callable job returned (msgpack-able, at most 1 MiB encoded)
    result: Any = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def new_job(
    spec: JobSpec,
    job_id: int,
    now: float,
    max_retries: int,
    backoff: tuple[float, float, float] | None,
) -> Job:
    """The pending job a spec asks for, as both backends make it (the retries and backoff
    resolved by the caller: the spec's, else its queue's, else the defaults)."""
    run_at = now
    if spec.run_at is not None:
        run_at = spec.run_at
    elif spec.delay:
        run_at = now + spec.delay
    # Positional: msgspec matches keyword arguments to fields one by one, which cost
    # four times as much as building the job (a microsecond per job of a batch).
    # The order is Job's field order; tests/test_state.py checks every field.
    return Job(
        job_id,
        tuple(spec.argv),
        spec.queue,
        spec.priority,
        "pending",
        now,
        run_at,
        spec.key,
        spec.label,
        spec.cwd,
        dict(spec.env) if spec.env else None,
        spec.timeout,
        max_retries,
        backoff,
        tuple(sorted(set(spec.after))) if spec.after else None,
        0,  # attempts
        None,  # started_at
        None,  # finished_at
        None,  # exit_code
        None,  # error
        None,  # pid
        None,  # pid_started
        None,  # progress
        spec.call,
    )


class StoredJob(Job, array_like=True, gc=False):
    """A Job in its stored form, an array of its fields (snapshots, `subs` journal records):
    the field names were two thirds of a job's map form (265 bytes per job; 80 as arrays).

    msgspec decodes a Struct type from a map or from an array, never both, and Job's map
    form is the protocol's and the contract's; this subclass adds no field (the same memory
    layout), so `as_jobs` turns decoded objects into Jobs by `__class__` assignment, without
    a copy. Stored by position: a new Job field must go last, with a default, so what was
    stored before still decodes.
    """


def as_jobs(stored: list[StoredJob]) -> list[Job]:
    """Decoded stored jobs made plain Jobs, in place (see StoredJob)."""
    jobs: list[Any] = stored
    for job in jobs:
        job.__class__ = Job
    return jobs


class QueueConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[queues.NAME]` in phxqd.toml: a queue's own limits and retry defaults."""

    #: most jobs of this queue running at once (within the global workers bound)
    concurrency: int | None = msgspec.field(default=None)
    #: retries of jobs that do not say (`submit --retries`)
    retries: int | None = None
    backoff_base: float | None = None
    backoff_max: float | None = None
    jitter: float | None = None
    #: how often jobs of this queue may start: "N/s", "N/m" or "N/h" (a token bucket)
    rate: str | None = None
    #: starts allowed at once under `rate` (the bucket's size; default 1)
    burst: int | None = None

    def backoff(self) -> tuple[float, float, float] | None:
        if self.backoff_base is None and self.backoff_max is None and self.jitter is None:
            return None
        base, cap, jitter = DEFAULT_BACKOFF
        return (
            base if self.backoff_base is None else self.backoff_base,
            cap if self.backoff_max is None else self.backoff_max,
            jitter if self.jitter is None else self.jitter,
        )


class SubmitResult(msgspec.Struct, gc=False):
    """The answer to one submitted spec: the job, new or (for a live key) the existing one."""

    job: Job
    deduplicated: bool


def validate_spec(spec: JobSpec) -> str | None:
    """Return why a spec cannot be queued, or None: phxqd.contract.spec_problem, which
    phxqctl's command line runs on its arguments before sending them, so both say the
    same."""
    # Positional, in spec_problem's order: matching 12 keyword arguments by name cost a
    # third of the call (0.4 of 1.3 µs, once per job submitted)
    return spec_problem(
        spec.argv,
        spec.call.func if spec.call is not None else None,
        spec.queue,
        spec.priority,
        spec.key,
        spec.max_retries,
        spec.backoff,
        spec.after,
        spec.timeout,
        spec.delay,
        spec.run_at,
        spec.label,
        spec.cwd,
        spec.env,
    )
