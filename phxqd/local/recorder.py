"""Changes made durable: events applied to the state and written to the journal, and
whoever waits for a job's end told once that end is on disk.

A request's events go through `commit`: the journal encodes them, the state applies them,
and the caller waits until the fsync policy says they are safe before it answers anyone.
What already happened (a job started or ended) goes through `note` and `record`, and
cannot be refused. The recorder also takes the snapshots that keep the journal short, and
resumes writing after a journal failure (`heal`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Container

import anyio

from phxqd.events import AnyEvent, Cleared, Completed, Failed, submitted_jobs
from phxqd.feed import Feed, describe, job_event
from phxqd.local import forked, snapshot
from phxqd.local.journal import Journal, JournalError, fsync_dir, list_segments
from phxqd.local.state import Refused, State
from phxqd.model import Job
from phxqd.settings import Settings
from phxqd.stats import Stats

log = logging.getLogger("phxqd")


class Recorder:
    def __init__(
        self,
        state: State,
        journal: Journal,
        settings: Settings,
        stats: Stats,
        feed: Feed,
        claimed: Container[int],
    ) -> None:
        self.state = state
        self.journal = journal
        self.settings = settings
        self.stats = stats
        self.feed = feed
        #: jobs the dispatcher has claimed (a failed commit never takes those back)
        self._claimed = claimed
        #: called after every change applied (the owner wakes the dispatcher with it)
        self.on_change: Callable[[], None] = lambda: None
        #: events of the jobs someone waits for, set once the job's end is durable
        self.waiters: dict[int, anyio.Event] = {}
        #: (finished_at, seconds it ran) of attempts ended in the last minute, for status
        self.recent: deque[tuple[float, float]] = deque()
        #: the LSN of the last request that submitted jobs (what the dispatcher waits for)
        self.last_submit_lsn = 0
        #: facts applied while the journal could not take them (see `note`)
        self._unjournaled = 0
        self._snapshot_due = anyio.Event()
        self._snapshot_size = 0
        #: one snapshot at a time: they share the temporary file, and an older one put in
        #: place after a newer one (whose segments are gone) would lose records. A stop
        #: cancels the background snapshot but does not wait for it: this lock does.
        self._snapshotting = anyio.Lock()
        state.on_cascade = self._cascaded

    async def commit(self, events: list[AnyEvent]) -> None:
        """Apply and persist a request's events; return once durable.

        Raises Refused when the journal cannot take them. Jobs it was submitting are then
        taken back out of memory (nobody was told they exist, and none has started: the
        dispatcher only starts durable jobs), so they do not reappear when writes resume.
        """
        if not events:
            return
        try:
            lsn = self.journal.append(events)
            if any(submitted_jobs(e) for e in events):
                self.last_submit_lsn = lsn  # the dispatcher waits for it (see Dispatcher.dispatch)
        except JournalError as e:
            raise Refused(
                "refused",
                f"{e}; phxqd accepts no changes until it can write again (reads still work)",
            ) from e
        self._apply(events)
        try:
            await self.journal.durable(lsn)
        except JournalError as e:
            unsaved = [
                job.id
                for ev in events
                for job in submitted_jobs(ev)
                if job.id in self.state.jobs and job.id not in self._claimed
            ]
            if unsaved:
                self.state.apply(Cleared(unsaved))
            if all(submitted_jobs(ev) for ev in events):
                raise Refused("refused", f"{e}; not saved") from e
            # A cancel, retry or pause is in effect already (a process may have been
            # signalled): it cannot be taken back, so say so rather than "not saved". The
            # snapshot that reopens the journal saves it with the rest of the state.
            raise Refused(
                "refused",
                f"{e}; done but not yet on disk: saved when phxqd can write again",
            ) from e
        self.finished_durably(events)

    async def record(self, events: list[AnyEvent]) -> None:
        """Apply and persist what already happened (a job started or ended); return once
        durable, and tell the waiters then."""
        await self.settle(self.note(events), events)

    def note(self, events: list[AnyEvent]) -> int | None:
        """Apply a fact and queue it for the journal, without waiting; its LSN, or None if
        the journal cannot take it now.

        Unlike a request, a fact cannot be refused: if the journal cannot take it, it stays
        in memory and the snapshot that reopens the journal makes it durable. Nobody needs
        to wait for a job's start to be on disk (the journal keeps its order before the
        job's end); a job's end is waited for by `settle`, after its worker slot is free.
        """
        try:
            lsn: int | None = self.journal.append(events)
        except JournalError:
            lsn = None
            self._unjournaled += len(events)
        self._apply(events)
        return lsn

    async def settle(self, lsn: int | None, events: list[AnyEvent]) -> None:
        """Wait until noted events are durable (if they can be), then wake their waiters."""
        if lsn is not None:
            with contextlib.suppress(JournalError):
                await self.journal.durable(lsn)
        self.finished_durably(events)

    def _apply(self, events: list[AnyEvent]) -> None:
        for event in events:
            self.state.apply(event)
            self.stats.count(event, self.state)
            if self.feed.active:
                self.feed.publish(describe(event, self.state.jobs))
        self.on_change()
        # At least snapshot_bytes, and at least twice the last snapshot: disk use stays
        # within ~3x the live state, and the cost of snapshots stays proportional to the
        # events written, however large the state.
        due = max(self.settings.snapshot_bytes, 2 * self._snapshot_size)
        if self.journal.bytes_since_snapshot >= due:
            self._snapshot_due.set()

    def _cascaded(self, job: Job, at: float) -> None:
        if self.feed.active:
            self.feed.publish([job_event("cancelled", job, at)])

    def finished_durably(self, events: list[AnyEvent]) -> None:
        """Wake the waiters of every job that is now finished: those the events name, and
        those cancelled with them because they were to run after them."""
        for event in events:
            if isinstance(event, Completed) or (
                isinstance(event, Failed) and event.retry_at is None
            ):
                job = self.state.jobs.get(event.id)
                if job is not None and job.started_at is not None:
                    self.recent.append((event.at, max(event.at - job.started_at, 0.0)))
        for job_id in [
            i for i in self.waiters if i not in self.state.jobs or self.state.jobs[i].finished
        ]:
            self.waiters.pop(job_id).set()

    async def wait(self, ids: list[int], timeout: float | None) -> list[Job]:
        """The jobs `ids` once each has finished durably, or as they are at the timeout."""
        for job_id in ids:
            self.state.get(job_id)
        with anyio.move_on_after(timeout if timeout is not None else float("inf")):
            for job_id in ids:
                job = self.state.jobs.get(job_id)
                while job is not None and not job.finished:
                    await self.waiters.setdefault(job_id, anyio.Event()).wait()
                    job = self.state.jobs.get(job_id)
        return [self.state.jobs[i] for i in ids if i in self.state.jobs]

    async def heal(self) -> None:
        """After a write failure, retry until the whole state can be written again.

        Resuming means: a snapshot of the state in memory (facts recorded meanwhile
        included), then the old segments removed, then a new segment. Until then every
        change request is refused and reads go on.
        """
        while True:
            await self.journal.failure.wait()
            log.error("journal failed; retrying every %gs", self.settings.retry_interval)
            while self.journal.failed is not None:
                await anyio.sleep(self.settings.retry_interval)
                try:
                    await self._resume_writes()
                except OSError as e:
                    log.warning("still cannot write the state: %s", e.strerror or e)

    async def _resume_writes(self) -> None:
        async with self._snapshotting:
            await self._snapshot_all_and_restart()

    async def _snapshot_all_and_restart(self) -> None:
        while True:
            seen = self._unjournaled
            lsn = self.journal.last_lsn
            data = snapshot.encode(self.state.snapshot(lsn))
            await anyio.to_thread.run_sync(snapshot.write, self.settings.journal_dir, data)
            if seen == self._unjournaled:  # nothing happened while it was being written
                break
        for _, path in list_segments(self.settings.journal_dir):
            path.unlink(missing_ok=True)  # all covered by the snapshot: replay skips them
        await anyio.to_thread.run_sync(fsync_dir, self.settings.journal_dir)
        self.journal.restart(lsn + 1)
        self._unjournaled = 0
        self.on_change()
        log.warning("journal writable again: state saved in a snapshot at record %d", lsn)

    async def snapshotter(self) -> None:
        """Take snapshots in the background when the journal has grown enough."""
        while True:
            await self._snapshot_due.wait()
            self._snapshot_due = anyio.Event()
            try:
                await self.snapshot()
            except (OSError, JournalError) as e:
                log.error("snapshot failed, the journal keeps growing until one succeeds: %s", e)

    async def snapshot(self) -> None:
        """Write the whole state, then drop the segments it makes redundant.

        The state is taken at one instant, so it matches exactly the records up to `lsn`;
        records appended after that stay in the journal and replay on top of it. A forked
        child encodes and writes it (see forked.py) while the loop goes on; if fork fails,
        the loop encodes it itself.
        """
        async with self._snapshotting:
            await self._snapshot()

    async def _snapshot(self) -> None:
        t0 = time.perf_counter()
        lsn = self.journal.last_lsn
        directory = self.settings.journal_dir
        child = forked.start(directory, lambda: self.state.snapshot(lsn))
        try:
            if child is None:
                log.warning("cannot fork to take a snapshot; taking it in the event loop")
                data = snapshot.encode(self.state.snapshot(lsn))
            await self.journal.rotate()
            if child is None:
                await anyio.to_thread.run_sync(snapshot.write_temporary, directory, data)
            else:  # once waited for (even on failure) it is reaped: never to be killed
                reaped, child = child, None
                await anyio.to_thread.run_sync(forked.wait, reaped)
        finally:
            # Cancelled (a stop) or failed before the child was waited for: it must not
            # go on writing the temporary file while the next snapshot writes it too.
            # (Shielded, in a thread: a child in the middle of an fsync dies only after it.)
            if child is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(forked.kill, child)
        size = await anyio.to_thread.run_sync(snapshot.publish, directory)
        self.journal.bytes_since_snapshot = 0
        self._snapshot_size = size
        segments = list_segments(self.settings.journal_dir)
        for (_, path), (next_first, _) in itertools.pairwise(segments):
            if next_first - 1 <= lsn:
                path.unlink(missing_ok=True)
        self.stats.snapshot.observe(time.perf_counter() - t0)
        log.info("snapshot at record %d: %d bytes", lsn, size)
