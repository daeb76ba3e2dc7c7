"""Progress of running jobs: told to listeners at once, checkpointed at most once a second
per job (see `Checkpoints.report`)."""

from __future__ import annotations

import math
from collections.abc import Callable

from phxqd.events import ProgressSaved
from phxqd.feed import Feed, job_event
from phxqd.local.state import State
from phxqd.model import Progress

#: seconds between two checkpoints of one job's progress
INTERVAL = 1.0


class Checkpoints:
    """Which progress reports become journal events, and when.

    A report whose job was checkpointed less than INTERVAL ago is held (the newest one per
    job, merged with those before it) and becomes a checkpoint once the interval has passed
    (`due`) or with the job's end (`take`). Listeners (`watch`, a streaming `wait`) are told
    of every report at once; `show` and `status` see the last checkpoint, at most a second
    old. A job reporting thousands of times a second thus costs no fsync storm, and a crash
    loses at most the last second of progress, never a job. Every checkpoint goes through
    the recorder like any other event.
    """

    def __init__(self, state: State, feed: Feed) -> None:
        self.state = state
        self.feed = feed
        #: when each running job's progress was last checkpointed
        self._saved: dict[int, float] = {}
        #: the newest report of each job not checkpointed yet
        self._held: dict[int, Progress] = {}

    def report(
        self, job_id: int, attempt: int, make: Callable[[Progress | None], Progress], now: float
    ) -> ProgressSaved | bool | None:
        """The checkpoint to record now, None if the report is held, False if the attempt
        has ended (a late report)."""
        job = self.state.get(job_id)
        if job.status != "running" or job.attempts != attempt:
            return False
        new = make(self._held.get(job_id, job.progress))
        if self.feed.active:
            self.feed.publish([job_event("progress", job, now, new)])
        if now - self._saved.get(job_id, -math.inf) >= INTERVAL:
            self._saved[job_id] = now
            self._held.pop(job_id, None)
            return ProgressSaved(job_id, new)
        self._held[job_id] = new
        return None

    def take(self, job_id: int) -> list[ProgressSaved]:
        """The checkpoint a finishing job still owes the journal, if any."""
        self._saved.pop(job_id, None)
        held = self._held.pop(job_id, None)
        return [] if held is None else [ProgressSaved(job_id, held)]

    def next_due(self) -> float | None:
        """When the earliest held report becomes due."""
        return min((self._saved[i] + INTERVAL for i in self._held), default=None)

    def due(self, now: float) -> list[ProgressSaved]:
        """Held reports whose interval has passed, as checkpoints (now taken)."""
        ready = [i for i in self._held if now - self._saved[i] >= INTERVAL]
        for job_id in ready:
            self._saved[job_id] = now
        return [ProgressSaved(i, self._held.pop(i)) for i in ready]
