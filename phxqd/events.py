"""Journal events: every change to the queue, as one record each.

The state is nothing but these events applied in order over the last snapshot, so each
event carries every value a replay needs (times, retry moments drawn with jitter, pids):
replaying never consults a clock or a random number generator.
"""

from __future__ import annotations

from typing import Any

import msgspec

from phxqd.model import Job, Progress
from phxqd.schedules_model import Schedule


class Event(msgspec.Struct, tag_field="e", array_like=True, gc=False):
    """Base of every journal event."""


class Submitted(Event, tag="sub"):
    """One new job, as journals written before `SubmittedBatch` hold them (still read)."""

    job: Job


class SubmittedBatch(Event, tag="subs"):
    """The new jobs of one request, in one record.

    One record instead of one per job: a batch of 1,000 is then one msgpack encoding and
    one checksum, and one pass of `State.apply` with its lookups hoisted. Applying it is
    exactly applying `Submitted(job)` for each job in order; a request's jobs were always
    made durable (and acknowledged) together, so nothing is lost by not being able to
    recover part of a batch. In the journal each job is an array of its fields (see
    `StoredJob` and journal.py), a third of the bytes of its map form.
    """

    jobs: list[Job]


class Started(Event, tag="start"):
    id: int
    at: float
    pid: int | None
    pid_started: float | None


class Completed(Event, tag="done"):
    id: int
    at: float
    exit_code: int
    result: Any = None


class Failed(Event, tag="fail"):
    """An attempt failed. With `retry_at` the job waits to run again, else it is dead."""

    id: int
    at: float
    exit_code: int | None
    error: str
    retry_at: float | None


class Cancelled(Event, tag="cancel"):
    id: int
    at: float
    reason: str


class Requeued(Event, tag="requeue"):
    """A running attempt was stopped by the daemon itself (shutdown): it does not count."""

    id: int


class Retried(Event, tag="retry"):
    """Finished jobs put back to pending by a person, with a fresh retry budget."""

    ids: list[int]
    at: float


class Cleared(Event, tag="clear"):
    ids: list[int]


class ProgressSaved(Event, tag="progress"):
    """A checkpoint of a running job's progress (at most about once a second per job)."""

    id: int
    progress: Progress


class QueueSet(Event, tag="queue"):
    """A queue's concurrency limit set at run time (None: back to the configured one)."""

    queue: str
    concurrency: int | None


class Paused(Event, tag="pause"):
    queue: str | None


class Resumed(Event, tag="resume"):
    queue: str | None


class QueueRate(Event, tag="queue-rate"):
    """A queue's start rate set at run time: at most `burst` starts at once, refilled at
    `per_second` (None: back to the configured rate, if any)."""

    queue: str
    per_second: float | None
    burst: int = 1


class ScheduleSet(Event, tag="sched"):
    """A schedule added or replaced, whole (its last fire kept by whoever decided)."""

    schedule: Schedule


class ScheduleRemoved(Event, tag="sched-rm"):
    name: str


class SchedulePaused(Event, tag="sched-pause"):
    """A schedule paused (True) or resumed (False)."""

    name: str
    paused: bool


class ScheduleFired(Event, tag="sched-fire"):
    """A schedule's firing at fire time `at`, and the job it submitted, in one record: the
    fire time and the job are durable together or not at all, so a crash at any instant
    can neither lose a recorded firing's job nor fire the same time twice (`at` becomes
    the schedule's `last_fire`, the guard of the next firing; the job's key is derived
    from the name and `at`).

    `job` None: the time passed without a run (missed after downtime, or skipped because
    the previous run was still going). `missed`: fire times before `at` that got no run
    of their own. `manual`: `schedule run NAME`, which leaves `last_fire` as it was.
    """

    name: str
    at: float
    job: Job | None
    fired_at: float
    missed: int = 0
    manual: bool = False


AnyEvent = (
    Submitted
    | SubmittedBatch
    | Started
    | Completed
    | Failed
    | Cancelled
    | Requeued
    | Retried
    | Cleared
    | ProgressSaved
    | QueueSet
    | Paused
    | Resumed
    | QueueRate
    | ScheduleSet
    | ScheduleRemoved
    | SchedulePaused
    | ScheduleFired
)


def submitted_jobs(event: AnyEvent) -> list[Job]:
    """The jobs an event submits (none for every other kind of event)."""
    if isinstance(event, SubmittedBatch):
        return event.jobs
    if isinstance(event, Submitted):
        return [event.job]
    if isinstance(event, ScheduleFired) and event.job is not None:
        return [event.job]
    return []
