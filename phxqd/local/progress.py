"""Progress reports of running jobs: shown at once, journaled at most once a second per
job (see `ProgressReports.report`)."""

from __future__ import annotations

import contextlib

from phxqd import protocol
from phxqd.events import AnyEvent, ProgressSaved
from phxqd.feed import Feed, job_event
from phxqd.local.journal import Journal, JournalError
from phxqd.local.state import Refused, State
from phxqd.model import Progress


class ProgressReports:
    def __init__(self, state: State, journal: Journal, feed: Feed) -> None:
        self.state = state
        self.journal = journal
        self.feed = feed
        #: when each running job's progress was last journaled, and who has newer since
        self._saved: dict[int, float] = {}
        self._dirty: set[int] = set()

    def report(self, req: protocol.ReportProgress, now: float) -> dict[str, bool]:
        """Show a running job's progress at once; journal it at most once a second per job.

        Progress is applied in memory right away (so `show`, `status` and `wait` see it),
        but written only when the job's last checkpoint is a second old, and with the job's
        outcome: a job reporting thousands of times a second costs no fsync storm. A crash
        loses at most the last second of progress, never a job.
        """
        job = self.state.get(req.id)
        if req.percent is not None and not 0 <= req.percent <= 100:
            raise Refused("usage", "--percent must be between 0 and 100")
        if any(n is not None and n < 0 for n in (req.done, req.total)):
            raise Refused("usage", "--done and --total must be 0 or more")
        if req.step is not None and len(req.step) > 500:
            raise Refused("usage", "--step is at most 500 characters")
        if job.status != "running" or job.attempts != req.attempt:
            return {"accepted": False}  # a late report from an attempt that has ended
        old = job.progress or Progress(now)
        new = Progress(
            now,
            req.percent if req.percent is not None else old.percent,
            req.step if req.step is not None else old.step,
            req.done if req.done is not None else old.done,
            req.total if req.total is not None else old.total,
        )
        event = ProgressSaved(job.id, new)
        self.state.apply(event)
        if self.feed.active:
            self.feed.publish([job_event("progress", job, now)])
        if now - self._saved.get(job.id, 0.0) >= 1.0:
            self._saved[job.id] = now
            with contextlib.suppress(JournalError):
                self.journal.append([event])  # not awaited: nobody waits for progress
        else:
            self._dirty.add(job.id)
        return {"accepted": True}

    def unsaved(self, job_id: int) -> list[AnyEvent]:
        """The checkpoint a finishing job still owes the journal, if any."""
        self._saved.pop(job_id, None)
        job = self.state.jobs.get(job_id)
        if job_id in self._dirty and job is not None and job.progress is not None:
            self._dirty.discard(job_id)
            return [ProgressSaved(job_id, job.progress)]
        return []
