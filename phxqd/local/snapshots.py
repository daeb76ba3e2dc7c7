"""The journal directory's upkeep: snapshots that keep the journal short, and resuming writes
after the journal failed (`heal`).

`Snapshots` is the only owner of the files in the journal directory besides the journal's
writer: it forks the child that writes a snapshot (forked.py), publishes it, and removes
the segments it makes redundant, fsyncing the directory where the power-cut model needs it.
"""

from __future__ import annotations

import itertools
import logging
import time

import anyio

from phxqd.local import forked, snapshot
from phxqd.local.journal import Journal, JournalError, fsync_dir, list_segments
from phxqd.local.state import State
from phxqd.notice import Notice
from phxqd.settings import Settings
from phxqd.stats import Stats

log = logging.getLogger("phxqd")


class Snapshots:
    def __init__(
        self, state: State, journal: Journal, settings: Settings, stats: Stats, changed: Notice
    ) -> None:
        self.state = state
        self.journal = journal
        self.settings = settings
        self.stats = stats
        #: given once writes resume (jobs submitted meanwhile may be claimed again)
        self._changed = changed
        #: facts applied while the journal could not take them (see `Recorder.note`)
        self._unjournaled = 0
        self._due = anyio.Event()
        self._last_size = 0
        #: one snapshot at a time: they share the temporary file, and an older one put in
        #: place after a newer one (whose segments are gone) would lose records. A stop
        #: cancels the background snapshot but does not wait for it: this lock does.
        self._lock = anyio.Lock()

    def grown(self) -> None:
        """The journal grew: take a snapshot in the background if it has grown enough.

        At least snapshot_bytes, and at least twice the last snapshot: disk use stays
        within ~3x the live state, and the cost of snapshots stays proportional to the
        events written, however large the state.
        """
        due = max(self.settings.snapshot_bytes, 2 * self._last_size)
        if self.journal.bytes_since_snapshot >= due:
            self._due.set()

    def unjournaled(self, count: int) -> None:
        """Facts were applied that the failed journal could not take: the snapshot that
        reopens it must include them."""
        self._unjournaled += count

    async def run(self) -> None:
        """Snapshots when due, and healing after a failure, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._snapshotter)
            tg.start_soon(self._heal)

    async def _snapshotter(self) -> None:
        while True:
            await self._due.wait()
            self._due = anyio.Event()
            try:
                await self.snapshot()
            except (OSError, JournalError) as e:
                log.error("snapshot failed, the journal keeps growing until one succeeds: %s", e)

    async def _heal(self) -> None:
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
                    async with self._lock:
                        await self._snapshot_all_and_restart()
                except OSError as e:
                    log.warning("still cannot write the state: %s", e.strerror or e)

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
        self._changed.set()
        log.warning("journal writable again: state saved in a snapshot at record %d", lsn)

    async def snapshot(self) -> None:
        """Write the whole state, then drop the segments it makes redundant.

        The state is taken at one instant, so it matches exactly the records up to `lsn`;
        records appended after that stay in the journal and replay on top of it. A forked
        child encodes and writes it (see forked.py) while the loop goes on; if fork fails,
        the loop encodes it itself.
        """
        async with self._lock:
            await self._snapshot()

    async def _snapshot(self) -> None:
        t0 = time.perf_counter()
        lsn = self.journal.last_lsn
        # What the journal took before now is what this snapshot covers. What it takes
        # while the snapshot is written is not, and must count towards the next one: a
        # snapshot that began right after another (so little was counted yet) and ran
        # slowly (a loaded machine) once dropped all that from the count, and the journal
        # stayed at several times the live state until as much again was written.
        covered = self.journal.bytes_since_snapshot
        directory = self.settings.journal_dir
        child = forked.start(directory, lambda: self.state.snapshot(lsn, joined=False))
        try:
            if child is None:
                log.warning("cannot fork to take a snapshot; taking it in the event loop")
                data = snapshot.encode(self.state.snapshot(lsn))
            await self.journal.rotate()
            if child is None:
                await anyio.to_thread.run_sync(snapshot.write_temporary, directory, data)
            else:
                await anyio.to_thread.run_sync(child.wait)
        finally:
            # Cancelled (a stop) or failed before the child was reaped: it must not go on
            # writing the temporary file while the next snapshot writes it too. Only the
            # thread that reaped it can say it was: a cancel can also come at the start of
            # `run_sync`, before the wait ever ran (a child left writing once damaged the
            # stop's snapshot). Shielded, in a thread: a child in an fsync dies only after it.
            if child is not None and not child.reaped:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(child.kill)
        size = await anyio.to_thread.run_sync(snapshot.publish, directory)
        self.journal.bytes_since_snapshot = max(0, self.journal.bytes_since_snapshot - covered)
        self._last_size = size
        segments = list_segments(directory)
        for (_, path), (next_first, _) in itertools.pairwise(segments):
            if next_first - 1 <= lsn:
                path.unlink(missing_ok=True)
        self.stats.snapshot.observe(time.perf_counter() - t0)
        log.info("snapshot at record %d: %d bytes", lsn, size)
        self.grown()  # what came meanwhile may make the next one due already
