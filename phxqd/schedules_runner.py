"""`Scheduler`: the task that fires schedules at their times, through the backend.

It keeps, for each schedule, its next unrecorded fire time in a heap, sleeps until the
soonest (or until told that a schedule changed), and then asks phxqd.schedules what is due
(the catch-up policy, after a downtime) and the backend to `fire` it: one atomic operation
that records the fire time and submits the job, refused if the time was recorded already.
So the decisions are the pure module's and the backend's, and this task only keeps time.

The store may fail it for a while (PostgreSQL out of reach, a journal that cannot write):
a read or a firing the backend refuses so (`Refused` with code `refused`) ends no more
than the round. The runner says so once, keeps what it still has to do (the names to
read again, the firings to try again) and tries again after a pause that doubles up to
RETRY_MAX; the fire times that pass meanwhile are then caught up by each schedule's
policy, as after a downtime. Any other exception is a bug and ends it (and phxqd).

A test-only fault point (`PHXQ_TEST_FAULT`, read once at start): `schedule-before-fire`
kills the daemon with SIGKILL right before a firing is handed to the backend,
`schedule-after-fire` right after it is durable. Nothing else reads it.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping

import anyio
import anyio.abc
import msgspec

from phxqd.backend import Backend
from phxqd.notice import Notice
from phxqd.protocol import Refused
from phxqd.replies import NextFire, ScheduleInfo
from phxqd.schedules import check, due, next_fire, upcoming, zone
from phxqd.schedules_model import Fired, Schedule, ScheduleSpec

log = logging.getLogger("phxqd.schedules")

#: after the store failed a read or a firing, seconds until it is tried again, doubled
#: after each round that failed, up to RETRY_MAX (as the PostgreSQL LISTEN is reopened)
RETRY_FIRST = 0.1
RETRY_MAX = 2.0
FAULT_ENV = "PHXQ_TEST_FAULT"
FIRING_AT_ONCE = 256
#: the longest the runner sleeps without looking at the wall clock again
MAX_SLEEP = 30.0


class Scheduler:
    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.clock = clock
        self._wake = Notice()
        #: names whose next fire time must be computed again (None: all of them)
        self._dirty: set[str] | None = None
        #: name -> its next fire time, as in the heap (other heap entries are stale)
        self._next: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        #: schedules whose firing waits for the previous run to end (overlap `queue`)
        self._blocked: set[str] = set()
        #: schedules whose previous run has ended since: their waiting firing is on time
        self._unblocked: set[str] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._fault = os.environ.get(FAULT_ENV, "")
        #: firings in flight at once (their records share journal writes)
        self._limiter = anyio.CapacityLimiter(FIRING_AT_ONCE)
        #: the store's error while it fails reads or firings (None: it works): said once
        self._failing: str | None = None
        #: the store failed something in this round (the pause then doubles)
        self._failed_now = False
        self._pause = RETRY_FIRST
        #: schedules whose firing the store failed, to be tried again (in `_next`)
        self._deferred: set[str] = set()

    def changed(self, name: str | None = None) -> None:
        """A schedule was added, replaced, removed, paused or resumed (None: any)."""
        if name is None or self._dirty is None:
            self._dirty = None
        else:
            self._dirty.add(name)
        self._wake.set()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            while True:
                self._failed_now = False
                try:
                    await self._round()
                except Refused as e:
                    if e.code != "refused":  # not the store's trouble: a bug, not hidden
                        raise
                    self._store_failed(e)
                if self._failed_now:
                    pause, self._pause = self._pause, min(self._pause * 2, RETRY_MAX)
                    if self._dirty is None or self._dirty:  # a read failed: read again then
                        await self._wake.wait(pause)
                        continue
                elif self._failing is not None and not self._deferred:
                    log.warning("schedules can be read and fired again")
                    self._failing, self._pause = None, RETRY_FIRST
                soonest = self._heap[0][0] if self._heap else math.inf
                # at most MAX_SLEEP: the sleep is monotonic, fire times are wall-clock
                # (a suspended machine or a clock set forward is noticed soon after)
                await self._wake.wait(min(max(soonest - self.clock(), 0.0), MAX_SLEEP))

    async def _round(self) -> None:
        """Fire what is due, and compute the next fire times of what fired or changed."""
        await self._refresh()
        now = self.clock()
        heap = self._heap
        names = []
        while heap and heap[0][0] <= now:
            at, name = heapq.heappop(heap)
            if self._next.get(name) == at:  # else stale
                del self._next[name]
                names.append(name)
        if names:
            # together: their journal records share the writes and fsyncs (group
            # commit) instead of one fsync after another
            async with anyio.create_task_group() as firing:
                for name in names:
                    firing.start_soon(self._fire_limited, name, now)
            # (None: all are computed again anyway); a deferred firing keeps its retry
            if self._dirty is not None:
                self._dirty.update(n for n in names if n not in self._deferred)
        await self._refresh()

    def _store_failed(self, e: Refused) -> None:
        """The store failed a read or a firing: said once until it works again."""
        if self._failing is None:
            log.warning(
                "schedules cannot be read or fired: %s; trying again until they can"
                " (fire times passed meanwhile are then caught up by each --catch-up)",
                e.message,
            )
        self._failing = e.message
        self._failed_now = True

    async def _refresh(self) -> None:
        """Compute again the next fire time of the schedules that changed (or of all).

        Read first, then changed: a store that cannot be read leaves the times as they
        were, and what was to be read again is kept for the next try (cleared first, it
        was lost: those schedules never fired again)."""
        dirty = self._dirty
        if dirty is not None and not dirty:
            return
        self._dirty = set()  # what changes while reading is read next time
        try:
            if dirty is None:
                found = await self.backend.schedules()
            else:
                found = [s for name in dirty if (s := await self.backend.get_schedule(name))]
        except BaseException:
            if dirty is None or self._dirty is None:
                self._dirty = None
            else:
                self._dirty |= dirty
            raise
        if dirty is None:
            self._next.clear()
            self._heap.clear()
        else:
            for name in dirty:
                self._next.pop(name, None)
        for s in found:
            name = s.spec.name
            if s.paused or name in self._blocked:
                continue
            at = next_fire(s)
            if at is not None:
                self._next[name] = at
                heapq.heappush(self._heap, (at, name))
        if len(self._heap) > 2 * len(self._next) + 64:  # mostly stale: rebuild
            self._heap = [(at, name) for name, at in self._next.items()]
            heapq.heapify(self._heap)
        # those now paused, removed or waiting for their previous run wait for no retry
        self._deferred.intersection_update(self._next)

    async def _fire_limited(self, name: str, now: float) -> None:
        async with self._limiter:
            await self._fire_due(name, now)

    async def _fire_due(self, name: str, now: float) -> None:
        self._deferred.discard(name)
        try:
            s = await self.backend.get_schedule(name)
            if s is None or s.paused:
                return
            plan = due(s, now, late_ok=name in self._unblocked)
            if plan.latest is None:
                self._unblocked.discard(name)
                return
            self._fault_point("schedule-before-fire")
            if plan.times:
                fired = await self.backend.fire(name, plan.times, now, plan.missed)
            else:
                fired = await self.backend.fire(
                    name, [plan.latest], now, plan.missed - 1, run=False
                )
        except Refused as e:
            if e.code == "refused" and "already" in e.message:
                # another node fired it first (a shared store): nothing amiss
                log.debug("schedule %s: not fired: %s", name, e.message)
                self._unblocked.discard(name)
            elif e.code == "refused":  # the store's trouble: tried again after a pause
                log.debug("schedule %s: not fired yet: %s", name, e.message)
                self._store_failed(e)
                self._retry_later(name)
            else:
                log.warning("schedule %s: not fired: %s", name, e.message)
                self._unblocked.discard(name)
            return
        self._unblocked.discard(name)
        self._fault_point("schedule-after-fire")
        self._log(name, plan.times, plan.missed, fired)
        if fired.blocked_by is not None and self._tg is not None:
            self._blocked.add(name)
            self._tg.start_soon(self._unblock_after, name, fired.blocked_by)

    def _log(self, name: str, times: list[float], missed: int, fired: Fired) -> None:
        if fired.jobs:
            log.info(
                "schedule %s fired: job %s%s",
                name,
                ", ".join(str(j.id) for j in fired.jobs),
                f" ({missed} missed fire times)" if missed else "",
            )
        elif fired.skipped == "missed":
            log.info("schedule %s: %d fire times missed while phxqd was down", name, missed)
        elif fired.skipped:
            log.info("schedule %s: fire time skipped: %s", name, fired.skipped)
        elif fired.blocked_by is not None:
            log.info("schedule %s: fires once job %d has ended", name, fired.blocked_by)

    def _retry_later(self, name: str) -> None:
        """Fire `name` again after the pause (not at its next fire time computed again:
        that is the one just refused, due at once, and it was tried again in a loop)."""
        at = self.clock() + self._pause
        self._deferred.add(name)
        self._next[name] = at
        heapq.heappush(self._heap, (at, name))

    async def _unblock_after(self, name: str, job_id: int) -> None:
        await self.backend.ended(job_id).wait()
        self._blocked.discard(name)
        self._unblocked.add(name)
        self.changed(name)

    def _fault_point(self, where: str) -> None:
        if self._fault == where:
            log.warning("test fault point %s: killing phxqd", where)
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------- requests
    async def add(self, spec: ScheduleSpec, now: float, source: str = "runtime") -> Schedule:
        if why := check(spec):
            raise Refused("usage", why)
        s = await self.backend.set_schedule(spec, now, source)
        self.changed(spec.name)
        return s

    async def remove(self, name: str) -> Schedule:
        s = await self.get(name)
        await self.backend.remove_schedule(name, "runtime")
        self.changed(name)
        return s

    async def pause(self, name: str, paused: bool, now: float) -> Schedule:
        """Pause or resume. Fire times that passed while paused are not caught up: on
        resume they are recorded as missed, and the next future time is the next run."""
        was_paused = (await self.get(name)).paused
        s = await self.backend.pause_schedule(name, paused)
        if was_paused and not paused:
            plan = due(
                msgspec.structs.replace(s, spec=msgspec.structs.replace(s.spec, catch_up="skip")),
                now,
            )
            if plan.latest is not None:  # every time passed while paused: none runs
                passed = plan.missed + len(plan.times)
                await self.backend.fire(name, [plan.latest], now, passed - 1, run=False)
                s = await self.get(name)
        self.changed(name)
        return s

    async def get(self, name: str) -> Schedule:
        s = await self.backend.get_schedule(name)
        if s is None:
            raise Refused("not_found", f"no schedule {name!r}")
        return s

    async def run_now(self, name: str, now: float) -> Fired:
        await self.get(name)
        return await self.backend.fire(name, [], now, 0, manual=True)

    async def reconcile(self, declared: Mapping[str, ScheduleSpec], now: float) -> None:
        """Make the schedules of the config file (`[schedules.NAME]`) the ones the queue
        has from it: add or replace each (a name added at run time becomes the file's),
        remove those the file no longer declares. Their records (last fire) are kept."""
        for spec in declared.values():
            if why := check(spec):
                log.error("[schedules.%s]: %s; left as it was", spec.name, why)
                continue
            await self.backend.set_schedule(spec, now, "config")
        for s in await self.backend.schedules():
            if s.source == "config" and s.spec.name not in declared:
                await self.backend.remove_schedule(s.spec.name, "config")
        self.changed()

    # ------------------------------------------------------------- views
    async def info(self, s: Schedule, now: float) -> ScheduleInfo:
        last = await self.backend.find(s.last_job) if s.last_job is not None else None
        spec = s.spec
        return ScheduleInfo(
            name=spec.name,
            cron=spec.cron,
            tz=spec.tz,
            zone=str(zone(spec.tz)) if spec.cron is not None else "-",
            every=spec.every,
            catch_up=spec.catch_up,
            overlap=spec.overlap,
            job=spec.job,
            source=s.source,
            paused=s.paused,
            next_fires=[] if s.paused else upcoming(s, now),
            last_fire=s.last_fire,
            last_fired_at=s.last_fired_at,
            last_job=s.last_job,
            last_status=None if last is None else last.status,
            fired=s.fired,
            missed=s.missed,
        )

    def next_fire_of(self, name: str) -> float | None:
        """The next fire time of `name` as the runner waits for it (None: none, or it
        waits for its previous run to end)."""
        return self._next.get(name)

    def next_fires(self, n: int = 5) -> list[NextFire]:
        """The soonest `n` fire times of all schedules (status)."""
        soonest = heapq.nsmallest(n, ((at, name) for name, at in self._next.items()))
        return [NextFire(name, at) for at, name in soonest]
