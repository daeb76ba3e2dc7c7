"""Counters and histograms the daemon keeps as it runs, for `phxqctl metrics`.

Plain Python numbers, updated on the hot path at the cost of a dict increment; the
Prometheus library is imported only when someone asks for the metrics (metrics.py).
They count since this daemon started, as Prometheus counters do.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from phxqd.events import (
    AnyEvent,
    Cancelled,
    Completed,
    Failed,
    Started,
    Submitted,
    SubmittedBatch,
)
from phxqd.model import Job

JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)
SYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), Prometheus style, +Inf last."""
        out, running = [], 0
        for bound, n in zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


#: how far back `Stats.last_minute` looks, in seconds
RECENT_SECONDS = 60


@dataclass(slots=True)
class Second:
    """The attempts that ended in one second: how many, and how long they ran in all."""

    second: int
    ended: int = 0
    seconds: float = 0.0


@dataclass
class Stats:
    #: (event kind, queue) -> count; kinds: submitted, started, completed, failed,
    #: retried (an attempt failed and will run again), cancelled
    jobs: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (hook config key, outcome) -> count; outcomes: ok, failed, timeout, unstartable,
    #: dropped (the hooks fell too far behind)
    hooks: Counter[tuple[str, str]] = field(default_factory=Counter)
    duration: dict[str, Histogram] = field(default_factory=dict)
    wait: dict[str, Histogram] = field(default_factory=dict)
    fsync: Histogram = field(default_factory=lambda: Histogram(SYNC_BUCKETS))
    snapshot: Histogram = field(default_factory=lambda: Histogram(JOB_BUCKETS))
    #: attempts ended in the last minute, for status: one `Second` per second in which
    #: some ended (at most RECENT_SECONDS + 1 of them, however many jobs end)
    recent: deque[Second] = field(default_factory=deque)

    def ended(self, at: float, seconds: float) -> None:
        """An attempt ended for good (completed, or failed with no retry left).

        Counted in its second, not kept one by one: a daemon that nobody asks for its
        status used to keep every end it had seen (about 140 bytes per job, for months).
        An end older than the newest second counted (clocks of two sources) goes into it.
        """
        recent, second = self.recent, int(at)
        if recent and second <= recent[-1].second:
            last = recent[-1]
        else:
            last = Second(second)
            recent.append(last)
            while recent[0].second < second - RECENT_SECONDS:
                recent.popleft()
        last.ended += 1
        last.seconds += seconds

    def last_minute(self, now: float) -> tuple[int, float]:
        """How many attempts ended in the last minute, and how long they ran in all."""
        while self.recent and self.recent[0].second < now - RECENT_SECONDS:
            self.recent.popleft()
        return sum(s.ended for s in self.recent), sum(s.seconds for s in self.recent)

    def count(self, event: AnyEvent, table: Mapping[int, Job]) -> None:
        """Called with each event after it was applied (live only: replays are not
        counted again)."""
        if type(event) is SubmittedBatch:  # nearly every event of a busy daemon's requests
            counts = self.jobs
            for job in event.jobs:
                counts["submitted", job.queue] += 1
            return
        match event:
            case Submitted(job):
                self.jobs["submitted", job.queue] += 1
            case SubmittedBatch(jobs):
                self.jobs.update(("submitted", job.queue) for job in jobs)
            case Started(job_id, at):
                job = table[job_id]
                self.jobs["started", job.queue] += 1
                self._histogram(self.wait, job.queue).observe(max(at - job.run_at, 0.0))
            case Completed(job_id, at):
                self._ended("completed", table, job_id, at)
            case Failed(job_id, at, _, _, retry_at):
                self._ended("failed" if retry_at is None else "retried", table, job_id, at)
            case Cancelled(job_id):
                if job_id in table:
                    self.jobs["cancelled", table[job_id].queue] += 1

    def _ended(self, kind: str, jobs: Mapping[int, Job], job_id: int, at: float) -> None:
        job = jobs.get(job_id)
        if job is None:
            return
        self.jobs[kind, job.queue] += 1
        if job.started_at is not None:
            self._histogram(self.duration, job.queue).observe(max(at - job.started_at, 0.0))

    @staticmethod
    def _histogram(table: dict[str, Histogram], queue: str) -> Histogram:
        h = table.get(queue)
        if h is None:
            h = table[queue] = Histogram(JOB_BUCKETS)
        return h
