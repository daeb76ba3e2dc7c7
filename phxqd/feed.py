"""The live feed of job events: what `watch`, streaming `wait`, hooks and the status file
hear about.

The feed is fed after the state has applied an event, so a listener that looks a job up
sees it as the event left it. Each listener has a bounded backlog: one that does not keep
up (a `watch` client on a slow terminal, a hook command that hangs) loses events, counted
and reported as one `dropped` event, and never slows the daemon or holds unbounded memory.
Building events costs something, so the daemon builds them only while someone listens.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import anyio

from phxqd.events import (
    AnyEvent,
    Cancelled,
    Completed,
    Failed,
    Requeued,
    Retried,
    ScheduleFired,
    Started,
    Submitted,
    SubmittedBatch,
)
from phxqd.model import Job, Progress
from phxqd.protocol import JobEvent

#: events kept for a listener that has not taken them yet
BACKLOG = 10_000


def job_event(kind: str, job: Job, at: float, progress: Progress | None = None) -> JobEvent:
    """The event `kind` of `job` as it is now (with `progress` newer than the job's own
    checkpoint, for a progress report)."""
    return JobEvent(
        kind,
        job.id,
        at,
        job.queue,
        job.status,
        job.attempts,
        job.label,
        job.key,
        job.exit_code,
        job.error,
        job.run_at if job.status == "retrying" else None,
        progress or job.progress,
    )


def describe(event: AnyEvent, jobs: Mapping[int, Job]) -> list[JobEvent]:
    """The job events a journal event means, read after the state applied it.

    Events that are not about one job's life (queue settings, clearing finished jobs,
    progress checkpoints: progress is told when reported, not when saved) mean none.
    """
    match event:
        case Submitted(job):
            return [job_event("submitted", job, job.created_at)]
        case SubmittedBatch(new):
            return [job_event("submitted", job, job.created_at) for job in new]
        case ScheduleFired(job=job) if job is not None:
            return [job_event("submitted", job, job.created_at)]
        case Started(job_id, at):
            kind, ids = "started", [job_id]
        case Completed(job_id, at):
            kind, ids = "completed", [job_id]
        case Failed(job_id, at, _, _, retry_at):
            kind, ids = ("failed" if retry_at is None else "retrying"), [job_id]
        case Cancelled(job_id, at):
            kind, ids = "cancelled", [job_id]
        case Requeued(job_id):
            kind, ids, at = "requeued", [job_id], time.time()
        case Retried(retried, at):
            kind, ids = "requeued", retried
        case _:
            return []
    return [job_event(kind, jobs[i], at) for i in ids if i in jobs]


class Listener:
    """One listener's backlog: the events it has not taken yet, and how many it lost."""

    def __init__(self, ids: frozenset[int] | None, backlog: int) -> None:
        self.ids = ids
        self._events: deque[JobEvent] = deque()
        self._backlog = backlog
        self._dropped = 0
        self._ready = anyio.Event()

    def put(self, event: JobEvent) -> None:
        if self.ids is not None and event.id not in self.ids:
            return
        if len(self._events) >= self._backlog:
            self._dropped += 1
        else:
            self._events.append(event)
        self._ready.set()

    async def take(self) -> list[JobEvent]:
        """Every event waiting (at least one), a `dropped` marker first if some were lost."""
        while not self._events and not self._dropped:
            self._ready = anyio.Event()
            await self._ready.wait()
        taken = list(self._events)
        self._events.clear()
        if self._dropped:
            taken.insert(0, JobEvent("dropped", 0, time.time(), count=self._dropped))
            self._dropped = 0
        return taken

    def discard(self) -> None:
        """Forget what is waiting (for a listener that only wants to know that something
        happened, and has just looked)."""
        self._events.clear()
        self._dropped = 0


class Feed:
    def __init__(self, backlog: int = BACKLOG) -> None:
        self._listeners: list[Listener] = []
        self._backlog = backlog

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @property
    def active(self) -> bool:
        """Whether anyone listens: without listeners, nothing is built."""
        return bool(self._listeners)

    def publish(self, events: list[JobEvent]) -> None:
        for listener in self._listeners:
            for event in events:
                listener.put(event)

    @contextmanager
    def listen(self, ids: frozenset[int] | None = None) -> Iterator[Listener]:
        """A listener for the events of these jobs (None: of every job) while in the block."""
        listener = self.attach(ids)
        try:
            yield listener
        finally:
            self.detach(listener)

    def attach(self, ids: frozenset[int] | None = None) -> Listener:
        """A listener from now until `detach` (for owners whose life is not one block)."""
        listener = Listener(ids, self._backlog)
        self._listeners.append(listener)
        return listener

    def detach(self, listener: Listener) -> None:
        self._listeners.remove(listener)
