"""The one path every change takes: decide (the caller, with `State`), apply, journal, wait
until durable, wake.

A request's events go through `commit`: the journal encodes them, the state applies them,
and the caller waits until the fsync policy says they are safe before it answers anyone.
What already happened (a job started or ended, a progress checkpoint) goes through `note`,
and cannot be refused. Nobody has been told of a job's end when it is noted, so it is
journaled lazily (written at once, fdatasync'd with the next record that is, or within
Journal.LAZY_SYNC): a stream of jobs costs a fdatasync per LAZY_SYNC, not one per job, and
a `wait` makes the ends it reports durable before it answers. Applying is the only place
that counts events, tells the feed, gives the dispatcher's notice and asks for a snapshot
when the journal has grown: nothing else calls `State.apply` on a live daemon.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

import anyio

from phxqd.events import AnyEvent, Completed, Failed, submitted_jobs
from phxqd.feed import Feed, describe, job_event
from phxqd.local.jobtable import Block
from phxqd.local.journal import Journal, JournalError
from phxqd.local.snapshots import Snapshots
from phxqd.local.state import State
from phxqd.model import Job
from phxqd.notice import Notice
from phxqd.protocol import Refused
from phxqd.stats import Stats

T = TypeVar("T")


class Recorder:
    def __init__(
        self,
        state: State,
        journal: Journal,
        snapshots: Snapshots,
        stats: Stats,
        feed: Feed,
        changed: Notice,
    ) -> None:
        self.state = state
        self.journal = journal
        self.snapshots = snapshots
        self.stats = stats
        self.feed = feed
        #: given after every change that may let a job start (see `_apply`)
        self._changed = changed
        #: events of the jobs someone waits for, set once the job has ended
        self._waiters: dict[int, anyio.Event] = {}
        #: the LSN of the last request that submitted jobs (what claims wait for)
        self.last_submit_lsn = 0

    async def commit(self, events: list[AnyEvent], keep: set[int] | None = None) -> None:
        """Apply and persist a request's events; return once durable.

        Raises Refused when the journal cannot take them. Jobs it was submitting are then
        taken back out of memory (nobody was told they exist, and none has started: only
        durable jobs are claimed; `keep` names claimed ones, which are never taken back),
        so they do not reappear when writes resume.
        """
        if not events:
            return
        lsn = self._begin(events)
        try:
            await self.journal.durable(lsn)
        except JournalError as e:
            raise self._undo(events, keep, e) from e
        self._finished(events)

    def commit_then(
        self,
        events: list[AnyEvent],
        then: Callable[[T | Refused], None],
        answer: T,
        keep: set[int] | None = None,
    ) -> None:
        """`commit` for a caller that does not wait (see Journal.when_durable): raises
        Refused at once when the journal cannot take the events; otherwise `then(answer)`
        once they are durable, or `then(refusal)` (what `commit` would raise) if they
        never will be. `then` must not raise."""
        if not events:
            then(answer)
            return
        lsn = self._begin(events)

        def durable(error: JournalError | None) -> None:
            if error is None:
                self._finished(events)
                then(answer)
            else:
                then(self._undo(events, keep, error))

        self.journal.when_durable(lsn, durable)

    def _begin(self, events: list[AnyEvent]) -> int:
        """Journal and apply a request's events (Refused if the journal cannot take them);
        the LSN to wait for."""
        try:
            # the writer is woken by `durable` below, unless this task writes the record
            # itself (one client alone: see Journal._sync_here)
            lsn, kept = self.journal.append_kept(events, wake=False)
            for e in events:  # (a loop, not any() of a generator: once per request)
                if submitted_jobs(e):
                    self.last_submit_lsn = lsn
                    break
        except JournalError as e:
            raise Refused(
                "refused",
                f"{e}; phxqd accepts no changes until it can write again (reads still work)",
            ) from e
        try:
            self._apply(events, kept)
        except BaseException:
            self.journal.wake()
            raise
        return lsn

    def _undo(self, events: list[AnyEvent], keep: set[int] | None, e: JournalError) -> Refused:
        """The journal could not make a request's events durable: take its submitted jobs
        back, and say so."""
        self.state.take_back(
            job.id
            for ev in events
            for job in submitted_jobs(ev)
            if job.id in self.state.jobs and (keep is None or job.id not in keep)
        )
        if all(submitted_jobs(ev) for ev in events):
            return Refused("refused", f"{e}; not saved")
        # A cancel, retry or pause is in effect already (a process may have been
        # signalled): it cannot be taken back, so say so rather than "not saved". The
        # snapshot that reopens the journal saves it with the rest of the state.
        return Refused(
            "refused",
            f"{e}; done but not yet on disk: saved when phxqd can write again",
        )

    async def record(self, events: list[AnyEvent]) -> None:
        """Apply and persist what already happened; return once durable, and tell the
        waiters then."""
        lsn = self.note(events)
        if lsn is not None:
            with contextlib.suppress(JournalError):
                await self.journal.durable(lsn)
        self._finished(events)

    def note(self, events: list[AnyEvent], lazy: bool = False) -> int | None:
        """Apply a fact and queue it for the journal, without waiting; its LSN, or None if
        the journal cannot take it now.

        Unlike a request, a fact cannot be refused: if the journal cannot take it, it stays
        in memory and the snapshot that reopens the journal makes it durable. Nobody needs
        to wait for a job's start to be on disk (the journal keeps its order before the
        job's end): `lazy` ones are fdatasync'd with the next record that is (see
        Journal.append).
        """
        try:
            lsn: int | None = self.journal.append(events, lazy=lazy)
        except JournalError:
            lsn = None
            self.snapshots.unjournaled(len(events))
        self._apply(events)
        return lsn

    def note_ends(self, events: list[AnyEvent]) -> None:
        """`note` job ends, lazily, and wake their waiters: `wait` makes them durable
        before it answers; `ended`'s callers need them only in memory."""
        self.note(events, lazy=True)
        self._finished(events)

    def _apply(self, events: list[AnyEvent], kept: list[AnyEvent | Block] | None = None) -> None:
        """`kept`: the events as the journal stored them (Journal.append_kept), which the
        state applies; the feed and the counters are told of `events`."""
        state, stats, feed = self.state, self.stats, self.feed
        for event, as_kept in zip(events, events if kept is None else kept, strict=True):
            cascaded = state.apply(as_kept)
            stats.count(event, state.jobs)
            if feed.active:
                feed.publish(describe(event, state.jobs))
                feed.publish([job_event("cancelled", j, j.finished_at or 0.0) for j in cascaded])
        # While everything is paused no job can start, so a change (a submit, say) is no
        # reason to look: a paused daemon taking submits from many clients otherwise ran
        # a whole dispatch round per request. The resume is itself a change.
        if not self.state.paused_all:
            self._changed.set()
        self.snapshots.grown()

    def _finished(self, events: list[AnyEvent]) -> None:
        """Wake the waiters of every job that is now finished: those the events name, and
        those cancelled with them because they were to run after them."""
        for event in events:
            if isinstance(event, Completed) or (
                isinstance(event, Failed) and event.retry_at is None
            ):
                job = self.state.jobs.get(event.id)
                if job is not None and job.started_at is not None:
                    self.stats.ended(event.at, max(event.at - job.started_at, 0.0))
        if not self._waiters:
            return
        jobs = self.state.jobs
        for job_id in [i for i in self._waiters if i not in jobs or jobs[i].finished]:
            self._waiters.pop(job_id).set()

    def ended(self, job_id: int) -> anyio.Event:
        """Set once the job has finished (or is gone): at once for one that has. Its end
        may not be durable yet (`wait` is the one that promises durability; this is for
        `logs --follow`, which re-reads the log anyway, and schedules that wait for their
        last job: the record of what they do next is journaled after that end, so it is
        never durable without it)."""
        job = self.state.jobs.get(job_id)
        if job is None or (job.finished and job_id not in self._waiters):
            done = anyio.Event()
            done.set()
            return done
        return self._waiters.setdefault(job_id, anyio.Event())

    def waited_for(self) -> list[int]:
        """Jobs someone is waiting to see finish."""
        return list(self._waiters)

    async def wait(self, ids: list[int], timeout: float | None) -> list[Job]:
        """The jobs `ids` once each has finished, or as they are at the timeout; what is
        returned is durable (ends are journaled lazily: see `note_ends`), so a power cut
        after the answer cannot take back an end it reported."""
        for job_id in ids:
            self.state.get(job_id)
        with anyio.move_on_after(timeout if timeout is not None else float("inf")):
            for job_id in ids:
                job = self.state.jobs.get(job_id)
                while job is not None and not job.finished:
                    await self._waiters.setdefault(job_id, anyio.Event()).wait()
                    job = self.state.jobs.get(job_id)
        if self.journal.durable_lsn < self.journal.last_lsn:
            with contextlib.suppress(JournalError):  # the state says what happened
                await self.journal.durable(self.journal.last_lsn)
        return [self.state.jobs[i] for i in ids if i in self.state.jobs]
