"""The queue in memory: decisions and their effects, with no I/O and no clock of its own.

Two kinds of method live here. *Decisions* (`submit`, `cancel`, `retry`, ...) look at the
state and return the events that a request should cause, or raise `Refused`; they change
nothing. `apply` is the only way the state changes, and the journal replay calls it too, so
a live daemon and a restarted one cannot disagree. Every time comes in as an argument.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import math
import operator
import random
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from phxqd.events import (
    AnyEvent,
    Cancelled,
    Cleared,
    Completed,
    Failed,
    Paused,
    ProgressSaved,
    QueueRate,
    QueueSet,
    Requeued,
    Resumed,
    Retried,
    ScheduleFired,
    SchedulePaused,
    ScheduleRemoved,
    ScheduleSet,
    Started,
    Submitted,
    SubmittedBatch,
)
from phxqd.local.jobtable import (
    _AFTER,
    _ID,
    _PRIORITY,
    _QUEUE,
    _RUN_AT,
    _STATUS,
    BULK,
    HAS_AFTER,
    STATUS_CODE,
    Block,
    Jobs,
    bulk_queue,
    column,
)
from phxqd.model import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    FINISHED,
    NO_RETRY_EXIT,
    STATUSES,
    WAITING,
    Job,
    JobSpec,
    Status,
    SubmitResult,
    new_job,
)
from phxqd.protocol import Refused
from phxqd.schedules_model import Fired, Schedule, ScheduleSpec

BACKOFF_BASE, BACKOFF_MAX, BACKOFF_JITTER = DEFAULT_BACKOFF

#: A map is rebuilt once its table takes more than this many times the bytes its entries
#: need (see `State._compact`), and at least `SHRINK_FLOOR` bytes
SHRINK_FACTOR = 8
SHRINK_FLOOR = 1 << 20
#: bytes a dict needs per entry, table and index (about 42 in CPython 3.11, built by inserts)
DICT_ENTRY_BYTES = 48

#: Subtracted from the sequence number of a retrying job: among ready jobs of one priority,
#: a retry whose backoff has elapsed goes before every pending job, FIFO among retries.
RETRY_FIRST = 1 << 62


class SnapshotIndex(msgspec.Struct, array_like=True):
    """What the State's indexes need of the snapshot's jobs, so that a restart builds
    them from packed columns at C speed and decodes no job (see jobtable.py).

    The columns are little-endian packed arrays, one entry per job, in the order of the
    snapshot's jobs (id order): `ids` (int64), `status` (a byte: its index in STATUSES),
    `queue` (uint32: an index into `queues`), `priority` (int64), `run_at` (float64) and
    `flags` (a byte: HAS_AFTER). Read back as memoryviews of the snapshot's buffer.
    """

    ids: memoryview
    status: memoryview
    queue: memoryview
    queues: list[str]
    priority: memoryview
    run_at: memoryview
    flags: memoryview
    #: (queue, status, number of jobs), as State.counts
    counts: list[tuple[str, str, int]]
    #: live idempotency keys -> job id, as State.keys
    keys: dict[str, int]
    #: the ids of the jobs of each of LISTED's statuses that has any (int64s)
    listed: dict[str, memoryview]


class Snapshot(msgspec.Struct):
    """Everything needed to rebuild the state without the events before `lsn`."""

    lsn: int
    next_id: int
    #: Jobs; but as `State.snapshot` gives them to be written, also Blocks (all of a
    #: block's jobs, untouched) and msgspec.Raw (one stored job), and as snapshot.load
    #: reads them with an `index`, Blocks only (see jobtable.py)
    jobs: list[Job]
    paused: list[str]
    paused_all: bool
    #: waiting jobs in the order they were queued (a retried job goes to the back)
    order: Sequence[int] = []
    limits: dict[str, int] = {}
    schedules: list[Schedule] = []
    #: start rates set at run time: queue -> (per second, burst)
    rates: dict[str, tuple[float, int]] = {}
    #: the indexes' columns; None from a snapshot written before them (then every job is
    #: a Job, and the indexes are built from the jobs)
    index: SnapshotIndex | None = None
    #: the queue order is the index's ids (every job waiting, first in first out: see
    #: `State.snapshot`), and `order` is empty; never so as read from a file
    order_is_ids: bool = False
    #: `State.snapshot(lsn, joined=False)` (the snapshot child): the index's six columns
    #: (ids, status, queue, priority, run_at, flags) each as the pieces whose concatenation
    #: it is, mostly views of the blocks' own columns, and `index`'s own six empty. The
    #: writer writes the pieces one after the other (snapshot._payload): a child that
    #: joined them copied 30 bytes a job, and more as the arrays grew (docs/benchmarks.md,
    #: "Snapshot memory after a restart").
    columns: list[list[Any]] | None = None

    def queue_order(self) -> Sequence[int]:
        """The waiting jobs' ids in queue order."""
        if self.order_is_ids and self.index is not None:
            ids = self.index.ids if self.columns is None else b"".join(self.columns[0])
            return column(ids, "q")  # type: ignore[no-any-return]
        return self.order


def _little(col: Any, typecode: str) -> memoryview:
    """A block's column (jobtable.column) as its little-endian bytes: a view where the
    machine is little-endian, else a byteswapped copy."""
    if sys.byteorder == "little":
        return memoryview(col).cast("B")
    swapped = array(typecode, col)
    swapped.byteswap()
    return memoryview(swapped).cast("B")


def pack(typecode: str, values: Iterable[Any]) -> bytes:
    """Values as a little-endian packed array (the snapshot's columns)."""
    packed = array(typecode, values)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


class QueueDefaults(msgspec.Struct, frozen=True):
    """What a queue's config says for jobs that do not say themselves."""

    max_retries: int | None = None
    backoff: tuple[float, float, float] | None = None


NO_DEFAULTS = QueueDefaults()
T = TypeVar("T")


def _pick(first: T | None, second: T | None, last: T) -> T:
    return first if first is not None else second if second is not None else last


class Sharer:
    """Makes decoded jobs share the objects they have in common.

    Every decoded job gets its own copies of its queue name, directory and argv; with a
    million jobs that is over 100 MB. Queue names and directories are interned; a job's
    `run_at` that equals its `created_at` becomes the same float; and an argv equal to the
    previous job's becomes the same tuple, or shares its program name (batches tend to
    repeat their command with other arguments). Applied
    to each job right after it is decoded, so the copies it drops leave holes the next
    decoded jobs fill, instead of a heap full of holes.
    """

    def __init__(self) -> None:
        self._argv: tuple[str, ...] = ()

    def all(self, jobs: Iterable[Job]) -> None:
        """`self(job)` for each job, in one loop (a batch of 10,000 paid a call per job)."""
        intern, last = sys.intern, self._argv
        for job in jobs:
            job.queue = intern(job.queue)
            if job.cwd is not None:
                job.cwd = intern(job.cwd)
            if job.run_at == job.created_at:
                job.run_at = job.created_at
            argv = job.argv
            if argv == last:
                job.argv = last
                continue
            if argv and last and argv[0] == last[0]:
                job.argv = (last[0], *argv[1:])
            last = job.argv
        self._argv = last

    def __call__(self, job: Job) -> None:
        job.queue = sys.intern(job.queue)
        if job.cwd is not None:
            job.cwd = sys.intern(job.cwd)
        if job.run_at == job.created_at:
            job.run_at = job.created_at
        argv, last = job.argv, self._argv
        if argv == last:
            job.argv = last
            return
        if argv and last and argv[0] == last[0]:  # the same program, other arguments
            job.argv = (last[0], *argv[1:])
        self._argv = job.argv


def backoff(
    attempts: int, rng: random.Random, policy: tuple[float, float, float] = DEFAULT_BACKOFF
) -> float:
    """Seconds to wait before attempt `attempts + 1`: exponential, capped, with jitter."""
    base, cap, jitter = policy
    delay: float = min(base * 2.0 ** max(attempts - 1, 0), cap)
    return delay * (1 + jitter * rng.random())


#: statuses with an index of their jobs' ids (`State._listed`): those that are usually few
#: among many (pending and completed jobs can be a million; they are found by walking)
LISTED = ("running", "retrying", "failed", "cancelled")


@dataclass
class State:
    """All jobs, their indexes and counters. See the module docstring for the rules."""

    #: by id, in id order; jobs a restart loaded from a snapshot stay in their stored
    #: form until touched (see jobtable.py)
    jobs: Jobs = field(default_factory=Jobs)
    next_id: int = 1
    paused: set[str] = field(default_factory=set)
    paused_all: bool = False
    #: (queue, status) -> number of jobs; kept exact by `apply` so `status` is O(queues).
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    #: live idempotency keys -> job id
    keys: dict[str, int] = field(default_factory=dict)
    #: the ids of the jobs in each of LISTED's statuses (pages of failed jobs must not
    #: walk a million completed ones); kept by `_count`, like `counts`
    _listed: dict[str, dict[int, None]] = field(
        default_factory=lambda: {s: {} for s in LISTED}, compare=False, repr=False
    )
    #: per queue, a heap of (-priority, seq, id) of jobs ready to run
    _ready: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    #: queues whose ready heap's list is sorted, so that a sorted run of entries that
    #: goes after its last is appended in one extend (`_push_run`: a restart replaying
    #: a backlog's batches, or batches into a queue nothing is taken from); any other
    #: change to a heap drops its queue from here unless it keeps the list sorted
    _sorted: set[str] = field(default_factory=set, compare=False, repr=False)
    #: heap of (run_at, seq, id) of waiting jobs whose time has not come
    _delayed: list[tuple[float, int, int]] = field(default_factory=list)
    #: id -> seq of its one valid heap entry; entries with another seq are stale
    _queued: dict[int, int] = field(default_factory=dict)
    #: `_queued`'s ids, in its order, ascend in both id and sequence number (a backlog
    #: queued first in, first out, nothing retried or requeued): a snapshot then takes
    #: the queue order as it stands instead of sorting a million entries (see
    #: `snapshot`); `_fifo_last` is the last id queued
    _fifo: bool = field(default=True, compare=False, repr=False)
    _fifo_last: int = field(default=0, compare=False, repr=False)
    _seq: int = 0
    #: concurrency limits set at run time (`phxqctl queue set`), by queue
    limits: dict[str, int] = field(default_factory=dict)
    #: job id -> waiting jobs that name it in --after and are not yet released
    _dependents: dict[int, list[int]] = field(default_factory=dict)
    #: blocked job id -> seq of when it was blocked (a snapshot keeps their order too)
    _blocked: dict[int, int] = field(default_factory=dict)
    #: shares what decoded jobs have in common (see Sharer)
    share: Sharer = field(default_factory=Sharer, compare=False, repr=False)
    #: schedules by name (journaled: ScheduleSet, ScheduleFired, ...)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    #: start rates set at run time (`phxqctl queue set Q --rate`): queue -> (per second, burst)
    rates: dict[str, tuple[float, int]] = field(default_factory=dict)
    #: per schedule, what its last firing changed, so `take_back` can undo it: (its
    #: first job's id, when it fired, then last_fire, last_job, last_fired_at, fired,
    #: missed as they were before it). One firing may be several events (catch-up `all`),
    #: applied together with one `fired_at`: the entry is the first one's.
    _fire_undo: dict[str, tuple[int, float, float | None, int | None, float | None, int, int]] = (
        field(default_factory=dict, compare=False, repr=False)
    )
    #: jobs cancelled by the last `apply` because a job they run after did not complete
    #: (no event of their own says so; the live feed needs to know)
    _cascaded: list[Job] = field(default_factory=list, compare=False, repr=False)

    # ----------------------------------------------------------------- decisions

    def submit(
        self,
        specs: list[JobSpec],
        now: float,
        defaults: Mapping[str, QueueDefaults] | None = None,
    ) -> tuple[list[AnyEvent], list[SubmitResult]]:
        """Events for a batch of submits; a live key returns its job instead of a new one.

        `defaults` are the configured retries and backoff of each queue, for specs that do
        not say; the job records the values it got, so replay needs no config.
        """
        for spec in specs:
            for dep in spec.after:
                d = self.jobs.get(dep)
                if d is None:
                    raise Refused("not_found", f"no job {dep} (named in --after)")
                if d.status in ("failed", "cancelled"):
                    raise Refused("refused", f"job {dep} (named in --after) is {d.status}")
        new: list[Job] = []
        results: list[SubmitResult] = []
        batch_keys: dict[str, Job] = {}
        defaults = defaults or {}
        for spec in specs:
            if spec.key is not None:
                existing = batch_keys.get(spec.key)
                if existing is None and spec.key in self.keys:
                    existing = self.jobs[self.keys[spec.key]]
                if existing is not None:
                    results.append(SubmitResult(existing, True))
                    continue
            job = self._new_job(spec, self.next_id + len(new), now, defaults)
            if spec.key is not None:
                batch_keys[spec.key] = job
            new.append(job)
            results.append(SubmitResult(job, False))
        return ([SubmittedBatch(new)] if new else []), results

    @staticmethod
    def _new_job(
        spec: JobSpec, job_id: int, now: float, defaults: Mapping[str, QueueDefaults]
    ) -> Job:
        """The job a spec asks for, with the queue's defaults for what it does not say."""
        queue_defaults = defaults.get(spec.queue, NO_DEFAULTS) if defaults else NO_DEFAULTS
        return new_job(
            spec,
            job_id,
            now,
            _pick(spec.max_retries, queue_defaults.max_retries, DEFAULT_RETRIES),
            _pick(spec.backoff, queue_defaults.backoff, None),
        )

    def get(self, job_id: int) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise Refused("not_found", f"no job {job_id}")
        return job

    def cancel(self, ids: Iterable[int], now: float) -> tuple[list[AnyEvent], list[int]]:
        """Cancel events for waiting jobs, and the running ids the pool must stop."""
        jobs = [self.get(i) for i in ids]
        for job in jobs:
            if job.finished:
                raise Refused("refused", f"job {job.id} is already {job.status}")
        events: list[AnyEvent] = [
            Cancelled(j.id, now, "cancelled") for j in jobs if j.status in WAITING
        ]
        return events, [j.id for j in jobs if j.status == "running"]

    def retry(self, ids: Iterable[int], now: float) -> list[AnyEvent]:
        jobs = [self.get(i) for i in dict.fromkeys(ids)]
        claimed: dict[str, int] = {}
        for job in jobs:
            if job.status not in ("failed", "cancelled"):
                raise Refused(
                    "refused",
                    f"job {job.id} is {job.status}: only failed or cancelled jobs can be retried",
                )
            if job.key is not None:
                holder = self.keys.get(job.key, claimed.get(job.key, job.id))
                if holder != job.id:
                    raise Refused(
                        "refused",
                        f"job {job.id}: key {job.key!r} is live in job "
                        f"{holder}; one live job per key",
                    )
                claimed[job.key] = job.id
            for dep in job.after or ():
                d = self.jobs.get(dep)
                if d is not None and d.status in ("failed", "cancelled"):
                    raise Refused(
                        "refused",
                        f"job {job.id} runs after job {dep}, which is "
                        f"{d.status}: retry job {dep} first",
                    )
        return [Retried([j.id for j in jobs], now)] if jobs else []

    def retry_failed(self, queue: str | None, now: float) -> list[AnyEvent]:
        """Every failed job of the queue (or all), oldest first; of several failed jobs with
        one key, only the newest (one live job per key)."""
        newest_of_key: dict[str, int] = {}
        ids = []
        for j in self.by_status("failed"):
            if queue is not None and j.queue != queue:
                continue
            if any(
                self.jobs[d].status in ("failed", "cancelled")
                for d in j.after or ()
                if d in self.jobs
            ):
                continue  # its dependency must be retried first
            if j.key is None:
                ids.append(j.id)
            elif j.key not in self.keys:
                newest_of_key[j.key] = j.id
        ids.extend(newest_of_key.values())
        return [Retried(sorted(ids), now)] if ids else []

    def clear(self, status: str | None, queue: str | None) -> list[AnyEvent]:
        if status is not None and status not in FINISHED:
            raise Refused(
                "usage",
                f"clear forgets finished jobs only: --status must be one "
                f"of {', '.join(sorted(FINISHED))}",
            )
        wanted = FINISHED if status is None else {status}
        ids = [j.id for j in self.jobs.walk(wanted) if queue is None or j.queue == queue]
        return [Cleared(ids)] if ids else []

    def outcome(
        self,
        job_id: int,
        exit_code: int | None,
        error: str | None,
        now: float,
        rng: random.Random,
        retryable: bool = True,
        result: Any = None,
    ) -> AnyEvent:
        """The event that ends a running attempt: done, retry later, or failed for good."""
        job = self.jobs[job_id]
        if exit_code == 0 and error is None:
            return Completed(job_id, now, 0, result)
        reason = error or f"exited with status {exit_code}"
        if exit_code == NO_RETRY_EXIT:
            retryable = False
            reason += " (no retries: the job asked to fail for good)"
        retry_at = None
        if retryable and job.attempts <= job.max_retries:
            retry_at = now + backoff(job.attempts, rng, job.backoff or DEFAULT_BACKOFF)
        return Failed(job_id, now, exit_code, reason, retry_at)

    def set_schedule(
        self, spec: ScheduleSpec, now: float, source: str = "runtime"
    ) -> list[AnyEvent]:
        """Add or replace a schedule (checked already by phxqd.schedules.check).

        Replacing keeps its record (last fire, counts, paused); a new timing (cron, zone,
        interval) starts counting fire times from now, so the change fires nothing missed.
        A schedule declared in the config file is the file's: a runtime `add` of its name
        is refused (the file changes it, at a reload).
        """
        old = self.schedules.get(spec.name)
        if old is not None and old.source == "config" and source == "runtime":
            raise Refused(
                "refused",
                f"schedule {spec.name!r} is declared in phxqd.toml: change it there and reload",
            )
        # `every` schedules count from a whole second: `--every 1h` fires at :SS.000
        anchor = float(math.floor(now))
        if old is None:
            new = Schedule(spec, anchor, "config" if source == "config" else "runtime")
        else:
            if old.spec == spec and old.source == source:
                return []
            new = msgspec.structs.replace(
                old, spec=spec, source="config" if source == "config" else "runtime"
            )
            if old.spec.timing() != spec.timing():
                new.anchor = anchor
        return [ScheduleSet(new)]

    def schedule(self, name: str) -> Schedule:
        s = self.schedules.get(name)
        if s is None:
            raise Refused("not_found", f"no schedule {name!r}")
        return s

    def remove_schedule(self, name: str, source: str = "runtime") -> list[AnyEvent]:
        s = self.schedule(name)
        if s.source == "config" and source == "runtime":
            raise Refused(
                "refused",
                f"schedule {name!r} is declared in phxqd.toml: remove it there and reload",
            )
        return [ScheduleRemoved(name)]

    def pause_schedule(self, name: str, paused: bool) -> list[AnyEvent]:
        s = self.schedule(name)
        return [] if s.paused == paused else [SchedulePaused(name, paused)]

    def fire(
        self,
        name: str,
        times: Sequence[float],
        now: float,
        missed: int,
        key: Callable[[str, float], str],
        defaults: Mapping[str, QueueDefaults] | None = None,
        run: bool = True,
        manual: bool = False,
    ) -> tuple[list[AnyEvent], Fired]:
        """The events of one firing of schedule `name` at fire times `times` (oldest
        first; several only for catch-up `all`), each job keyed by `key(name, time)`;
        `missed` earlier fire times got no run.

        Refused if a time is at or before the schedule's last recorded fire time: it fired
        already (here, or on another node). The overlap policy looks at the job of the
        previous firing: still waiting or running, `skip` records the times without a run,
        `queue` returns `Fired(blocked_by=...)` and no events (the caller fires again once
        that job has ended), `allow` fires. `run` False: the times passed without a run
        (catch-up `skip` after a downtime), recorded as missed. `manual` (`schedule
        run`): one job at `now`, whatever the overlap, the last fire time untouched.
        """
        s = self.schedule(name)
        if not manual and s.last_fire is not None and times and times[0] <= s.last_fire:
            raise Refused("refused", f"schedule {name!r} fired at {times[0]!r} already")
        if manual:
            times = [now]
        if not times:
            return [], Fired()
        if not run and not manual:
            return [ScheduleFired(name, times[-1], None, now, missed + len(times))], Fired(
                skipped="missed"
            )
        prev = self.jobs.get(s.last_job) if s.last_job is not None else None
        if prev is not None and not prev.finished and not manual:
            if s.spec.overlap == "queue":
                return [], Fired(blocked_by=prev.id)
            if s.spec.overlap == "skip":
                return [ScheduleFired(name, times[-1], None, now, missed + len(times))], Fired(
                    skipped=f"job {prev.id} of the previous firing is still {prev.status}"
                )
        events: list[AnyEvent] = []
        made: list[Job] = []
        next_id = self.next_id
        for i, at in enumerate(times):
            spec = msgspec.structs.replace(s.spec.job, key=key(name, at))
            holder = self.keys.get(spec.key) if spec.key is not None else None
            job = None
            if holder is None:
                job = self._new_job(spec, next_id, now, defaults or {})
                next_id += 1
                made.append(job)
            events.append(ScheduleFired(name, at, job, now, missed if i == 0 else 0, manual))
        if not made:
            existing = self.jobs[self.keys[key(name, times[-1])]]
            return events, Fired(job=existing, deduplicated=True)
        return events, Fired(job=made[-1], jobs=made)

    def claim_next(
        self,
        now: float,
        below_id: int | None = None,
        busy: Mapping[str, int] | None = None,
        limits: Mapping[str, int] | None = None,
        blocked: Container[str] = (),
    ) -> Job | None:
        """The next job to start, taken off the ready heaps; the caller must start it.

        Jobs with an id of `below_id` or more are passed over for now: the caller uses it
        to start only jobs whose submission is already durable. A queue with `busy[q]`
        jobs at its limit (`limits`, overridden by limits set at run time) is skipped, and
        so is a queue in `blocked` (its start rate allows no start now).
        """
        self._promote(now)
        if self.paused_all:
            return None
        best: tuple[int, int, int] | None = None
        best_queue = ""
        for queue, heap in self._ready.items():
            if queue in self.paused or queue in blocked:
                continue
            limit = self.limits.get(queue, limits.get(queue) if limits else None)
            if limit is not None and busy is not None and busy.get(queue, 0) >= limit:
                continue
            while heap and self._queued.get(heap[0][2]) != heap[0][1]:
                self._sorted.discard(queue)
                heapq.heappop(heap)
            if not heap or (below_id is not None and heap[0][2] >= below_id):
                continue
            if best is None or heap[0] < best:
                best, best_queue = heap[0], queue
        if best is None:
            return None
        self._sorted.discard(best_queue)
        heapq.heappop(self._ready[best_queue])
        del self._queued[best[2]]
        return self.jobs[best[2]]

    def next_wakeup(self) -> float | None:
        """When the earliest delayed job becomes ready, for the dispatcher's sleep."""
        while self._delayed and self._queued.get(self._delayed[0][2]) != self._delayed[0][1]:
            heapq.heappop(self._delayed)
        return self._delayed[0][0] if self._delayed else None

    # ------------------------------------------------------------------- queries

    def summary(self) -> dict[str, object]:
        by_status = dict.fromkeys(STATUSES, 0)
        queues: dict[str, dict[str, int]] = {}
        for (queue, status), n in self.counts.items():
            if n:
                by_status[status] += n
                queues.setdefault(queue, dict.fromkeys(STATUSES, 0))[status] = n
        return {
            "counts": by_status,
            "queues": queues,
            "total": len(self.jobs),
            "paused": sorted(self.paused),
            "paused_all": self.paused_all,
        }

    def select(
        self,
        status: str | None,
        queue: str | None,
        limit: int,
        *,
        before: int | None = None,
        label: str | None = None,
        key: str | None = None,
    ) -> list[Job]:
        """Jobs newest first, filtered; with `before`, only jobs whose id is below it
        (keyset pagination: a page's last id is the next page's `before`).

        Ids only grow and `jobs` is in id order, so a page after a cursor is found by
        looking ids up downwards from it rather than by walking the newest jobs again.
        Without a cursor the walk stops as soon as every job the counts say matches has
        been found.
        """
        out: list[Job] = []
        if limit <= 0 or not self.jobs:
            return out
        left = self._matching(status, queue) if before is None else len(self.jobs)
        if left == 0:
            return out
        listed = self._listed.get(status) if status is not None else None
        if listed is not None and len(listed) * 8 < len(self.jobs):
            # few jobs of this status: sort their ids rather than walk past the others
            ids = heapq.nlargest(
                limit if label is None and key is None and queue is None else len(listed),
                (i for i in listed if before is None or i < before),
            )
            table = self.jobs
            candidates: Iterable[Job] = (table[i] for i in ids)
            left = len(listed)
        elif before is None:
            candidates = self.jobs.walk(None if status is None else (status,), newest_first=True)
        else:
            candidates = self._below(before)
        for job in candidates:
            if (status is None or job.status == status) and (queue is None or job.queue == queue):
                left -= 1
                if (label is None or job.label == label) and (key is None or job.key == key):
                    out.append(job)
                    if len(out) >= limit:
                        break
                if left <= 0:
                    break
        return out

    def _matching(self, status: str | None, queue: str | None) -> int:
        """How many jobs have this status and queue (None: any), from the counts."""
        return sum(
            n
            for (q, st), n in self.counts.items()
            if (status is None or st == status) and (queue is None or q == queue)
        )

    def _below(self, before: int) -> Iterator[Job]:
        """The jobs with ids below `before`, highest first."""
        table = self.jobs
        if before > self.next_id:
            before = self.next_id
        lowest = next(iter(table))
        find = table.get
        for job_id in range(before - 1, lowest - 1, -1):
            job = find(job_id)
            if job is not None:
                yield job

    def waits_for(self, job: Job) -> list[int]:
        """The jobs named in --after that have not completed yet."""
        return [d for d in job.after or () if d in self.jobs and self.jobs[d].status != "completed"]

    def finished_before(self, cutoff: float) -> list[int]:
        """The ids of the jobs that finished before `cutoff` (retention), in id order: a
        walk that ends once it has seen every finished job the counts say there are."""
        left = self._matching_statuses(FINISHED)
        ids: list[int] = []
        if not left:
            return ids
        for job in self.jobs.walk(FINISHED):
            if job.finished_at is not None and job.finished_at < cutoff:
                ids.append(job.id)
            left -= 1
            if left <= 0:
                break
        return ids

    def _matching_statuses(self, statuses: Container[str]) -> int:
        return sum(n for (_, st), n in self.counts.items() if st in statuses)

    def by_status(self, *statuses: str) -> Iterator[Job]:
        """The jobs of these statuses, in id order: from `_listed` when it has them all
        (a restart asks for the running ones), else a walk that decodes only jobs of
        these statuses (see Jobs.walk)."""
        if all(s in LISTED for s in statuses):
            ids = sorted(i for s in statuses for i in self._listed[s])
            return iter(list(map(self.jobs.__getitem__, ids)))
        return self.jobs.walk(statuses)

    # --------------------------------------------------------------------- apply

    def apply(self, event: AnyEvent | Block) -> list[Job]:
        """Change the state by one event. Replay calls this too: it must stay deterministic.

        Returns the jobs the event cancelled besides the one it names: those that were to
        run after a job that failed or was cancelled (usually none).
        """
        cascaded: list[Job] = []
        self._cascaded = cascaded
        if type(event) is SubmittedBatch:  # a submit: first, before the match's class tests
            self._add(event.jobs)
            return cascaded
        match event:
            case Submitted(job):
                self._add((job,))
            case SubmittedBatch(jobs):
                self._add(jobs)
            case Block():  # a journal's bulk batch, replayed or just recorded (journal.py)
                self._add_block(event)
            case Started(job_id, at, pid, pid_started):
                job = self.jobs[job_id]
                self._set_status(job, "running")
                self._queued.pop(job_id, None)
                job.attempts += 1
                job.started_at = at
                job.exit_code = job.error = job.progress = job.result = None  # the last's
                job.pid, job.pid_started = pid, pid_started
            case Completed(job_id, at, exit_code, result):
                job = self.jobs[job_id]
                self._finish(job, "completed", at)
                job.exit_code, job.error, job.result = exit_code, None, result
                self._release(job_id, at)
            case Failed(job_id, at, exit_code, error, retry_at):
                job = self.jobs[job_id]
                job.exit_code, job.error, job.pid = exit_code, error, None
                if retry_at is None:
                    self._finish(job, "failed", at)
                    self._release(job_id, at)
                else:
                    self._set_status(job, "retrying")
                    job.run_at = retry_at
                    self._enqueue(job)
            case Cancelled(job_id, at, reason):
                job = self.jobs[job_id]
                self._finish(job, "cancelled", at)
                job.error = reason
                self._release(job_id, at)
            case Requeued(job_id):
                job = self.jobs[job_id]
                job.attempts -= 1
                job.pid = None
                self._set_status(job, "pending")
                self._enqueue(job)
            case Retried(ids, at):
                for job_id in ids:
                    job = self.jobs[job_id]
                    job.attempts = 0
                    job.finished_at = job.exit_code = job.error = job.pid = None
                    job.run_at = at
                    self._set_status(job, "pending")
                    if job.key is not None:
                        self.keys[job.key] = job.id
                    self._enqueue_or_block(job)
            case Cleared(ids):
                self._remove(ids)
            case ProgressSaved(job_id, progress):
                self.jobs[job_id].progress = progress
            case QueueSet(queue, concurrency):
                if concurrency is None:
                    self.limits.pop(queue, None)
                else:
                    self.limits[queue] = concurrency
            case QueueRate(queue, per_second, burst):
                if per_second is None:
                    self.rates.pop(queue, None)
                else:
                    self.rates[queue] = (per_second, burst)
            case ScheduleSet(schedule):
                self.schedules[schedule.spec.name] = schedule
            case ScheduleRemoved(name):
                self.schedules.pop(name, None)
                self._fire_undo.pop(name, None)
            case SchedulePaused(name, paused):
                if name in self.schedules:
                    self.schedules[name].paused = paused
            case ScheduleFired(name, at, job, fired_at, missed, manual):
                if job is not None:
                    self._add((job,))
                s = self.schedules.get(name)
                if s is not None:
                    undo = self._fire_undo.get(name)
                    if job is not None and (undo is None or undo[1] != fired_at):
                        self._fire_undo[name] = (
                            job.id,
                            fired_at,
                            s.last_fire,
                            s.last_job,
                            s.last_fired_at,
                            s.fired,
                            s.missed,
                        )
                    if job is not None:
                        s.last_job, s.last_fired_at = job.id, fired_at
                        s.fired += 1
                    if not manual:
                        s.last_fire = at
                    s.missed += missed
            case Paused(queue):
                if queue is None:
                    self.paused_all = True
                else:
                    self.paused.add(queue)
            case Resumed(queue):
                if queue is None:
                    self.paused_all = False
                    self.paused.clear()
                else:
                    self.paused.discard(queue)
        return cascaded

    def take_back(self, ids: Iterable[int]) -> None:
        """Undo the submission of jobs whose record the journal could not make durable.

        Not an event: it removes what an `apply` of an event that never reached the disk
        added, so memory matches the journal again (nobody was told the jobs exist, and
        none has started: only durable jobs are claimed). A schedule's firing whose job is
        taken back is undone too (its last fire time restored), so it fires again.
        """
        ids = list(ids)
        taken = set(ids)
        for name, (job_id, _, *before) in list(self._fire_undo.items()):
            s = self.schedules.get(name)
            if job_id in taken and s is not None:
                s.last_fire, s.last_job, s.last_fired_at, s.fired, s.missed = before  # type: ignore[assignment]
                del self._fire_undo[name]
        self._remove(ids)

    def snapshot(self, lsn: int, joined: bool = True) -> Snapshot:
        """The state, to be written. Taken in the snapshot child (forked.py), where every
        object it touches costs the page it is on (a copy-on-write): a FIFO backlog of
        only waiting jobs gives its queue order as the ids column, touching no id; and
        with `joined` False the index's columns stay in pieces (see Snapshot.columns)."""
        jobs, index, columns = self._stored(joined)
        order: Sequence[int]
        if self._blocked or not self._fifo:
            # (no merged copy of a million entries when nothing is blocked)
            place = {**self._blocked, **self._queued} if self._blocked else self._queued
            order = sorted(place, key=place.__getitem__)
        elif len(self._queued) == len(self.jobs):
            order = []  # the ids column (order_is_ids), without an int object per id
        else:
            order = list(self._queued)
        return Snapshot(
            lsn,
            self.next_id,
            jobs,
            sorted(self.paused),
            self.paused_all,
            order,
            dict(self.limits),
            [msgspec.structs.replace(s) for s in self.schedules.values()],
            dict(self.rates),
            index,
            order_is_ids=self._fifo and not self._blocked and len(self._queued) == len(self.jobs),
            columns=columns,
        )

    def _stored(self, joined: bool) -> tuple[list[Any], SnapshotIndex, list[list[Any]] | None]:
        """The jobs as a snapshot writes them, its index (see SnapshotIndex), and unless
        `joined` the index's six columns as pieces (see Snapshot.columns).

        A block none of whose jobs was touched goes whole, its columns taken as they are
        (views: the snapshot child copies none of them unless `joined`), and its jobs
        skipped in a loop in C; of the others, a Job gives its fields, a job still in a
        block its stored bytes and that block's columns."""
        queues: dict[str, int] = {}
        # ids, status, queue, priority, run_at, flags
        pieces: list[list[Any]] = [[] for _ in range(6)]
        ids, priority, queue, run_at = array("q"), array("q"), array("I"), array("d")
        status, flags = bytearray(), bytearray()
        out: list[Any] = []

        def flush() -> None:
            """The columns of the jobs since the last whole block, as pieces."""
            nonlocal ids, priority, queue, run_at, status, flags
            if ids:
                for c in (ids, priority, queue, run_at):
                    if sys.byteorder != "little":
                        c.byteswap()
                made: tuple[Any, ...] = (ids, status, queue, priority, run_at, flags)
                for part, made_column in zip(pieces, made, strict=True):
                    part.append(memoryview(made_column).cast("B"))
                ids, priority, queue, run_at = array("q"), array("q"), array("I"), array("d")
                status, flags = bytearray(), bytearray()

        # The values, not the items: the keys (a million int objects) are not touched.
        # A block's jobs still in it are the positions not taken, in order (see Block).
        values = iter(self.jobs.data.values())
        cursors: dict[Block, int] = {}
        for job in values:
            if isinstance(job, Block):
                if job.taken is None:
                    flush()
                    out.append(job)
                    names = [queues.setdefault(q, len(queues)) for q in job.queues]
                    if names == list(range(len(names))):
                        queues_of = _little(job.queue, "I")
                    else:
                        queues_of = _little(array("I", [names[q] for q in job.queue]), "I")
                    for part, c in zip(
                        pieces,
                        (
                            _little(job.ids, "q"),
                            memoryview(job.status),
                            queues_of,
                            _little(job.priority, "q"),
                            _little(job.run_at, "d"),
                            memoryview(job.flags),
                        ),
                        strict=True,
                    ):
                        part.append(c)
                    collections.deque(itertools.islice(values, len(job) - 1), maxlen=0)
                    continue
                i, taken = cursors.get(job, 0), job.taken
                while taken[i]:
                    i += 1
                cursors[job] = i + 1
                out.append(job.raw(i))
                ids.append(job.ids[i])
                status.append(job.status[i])
                queue.append(queues.setdefault(job.queues[job.queue[i]], len(queues)))
                priority.append(job.priority[i])
                run_at.append(job.run_at[i])
                flags.append(job.flags[i])
                continue
            out.append(job)
            ids.append(job.id)
            status.append(STATUS_CODE[job.status])
            queue.append(queues.setdefault(job.queue, len(queues)))
            priority.append(job.priority)
            run_at.append(job.run_at)
            flags.append(HAS_AFTER if job.after is not None else 0)
        flush()
        empty = memoryview(b"")
        columns = (
            [memoryview(b"".join(part)) if len(part) != 1 else part[0] for part in pieces]
            if joined
            else [empty] * 6
        )
        return (
            out,
            SnapshotIndex(
                columns[0],
                columns[1],
                columns[2],
                list(queues),
                columns[3],
                columns[4],
                columns[5],
                [(q, st, n) for (q, st), n in self.counts.items() if n],
                dict(self.keys),
                {st: memoryview(pack("q", ids)) for st, ids in self._listed.items() if ids},
            ),
            None if joined else pieces,
        )

    @classmethod
    def from_snapshot(cls, snap: Snapshot, now: float | None = None, shared: bool = False) -> State:
        """Rebuild from a snapshot in one pass (a restart with a million jobs waits on it).

        Does in bulk what `apply(Submitted(job))` does for each job, and with `now` also
        what `claim_next` would do first: jobs already due go straight onto their ready
        heaps. Each heap is heapified once instead of pushed a million times. Waiting jobs
        keep the order they were queued in (`snap.order`). `shared`: the snapshot's jobs
        went through a `Sharer` as they were decoded (snapshot.load does that).

        With the snapshot's index (`snap.index`), the jobs may be stored bytes: they are
        kept so (see jobtable.py), and the indexes are built from the index's columns.
        """
        if snap.columns is not None:
            raise ValueError("a snapshot whose columns are in pieces is the writer's only")
        state = cls(
            next_id=snap.next_id,
            paused=set(snap.paused),
            paused_all=snap.paused_all,
            limits=dict(snap.limits),
            schedules={s.spec.name: s for s in snap.schedules},
            rates=dict(snap.rates),
        )
        if snap.index is not None and all(isinstance(b, Block) for b in snap.jobs):
            state._from_index(snap, snap.index, now)
            return state
        all_jobs = snap.jobs  # (all Jobs)
        if not shared:
            share = state.share
            for job in all_jobs:
                share(job)
        # In bulk, with builtins that loop in C (map, zip, Counter): a Python loop over a
        # million jobs doing this cost a second of a restart (see bench/bench_restart.py).
        jobs: dict[int, Job] = dict(zip(map(_ID, all_jobs), all_jobs, strict=True))
        state.jobs = Jobs(jobs)  # type: ignore[arg-type]
        counts = state.counts
        counts.update(Counter(zip(map(_QUEUE, all_jobs), map(_STATUS, all_jobs), strict=True)))
        keys = state.keys
        for job in all_jobs:
            if job.key is not None and job.status not in FINISHED:
                keys[job.key] = job.id
        if any(counts.get((q, s)) for q, s in counts if s in LISTED):
            for job in all_jobs:
                if job.status in LISTED:
                    state._listed[job.status][job.id] = None
        queued, delayed, ready = state._queued, state._delayed, state._ready
        waiting = sum(n for (_, st), n in counts.items() if st in WAITING)
        in_order: Sequence[int] = snap.queue_order()
        if len(in_order) != waiting:  # an older snapshot, without the order: by id
            listed = set(in_order)
            in_order = [
                *in_order,
                *(j.id for j in all_jobs if j.status in WAITING and j.id not in listed),
            ]
        due = -math.inf if now is None else now  # without a clock, everything waits
        ordered = list(map(jobs.__getitem__, in_order))
        if state._ready_in_bulk(ordered, due):
            return state
        seq = 0
        for job in ordered:
            seq = seq + 1 if seq >= job.id else job.id  # (see _next_seq)
            if job.after is not None and state.waits_for(job):
                state._seq = seq
                state._block(job)
                seq = state._seq
                continue
            job_id = job.id
            key = seq - RETRY_FIRST if job.status == "retrying" else seq
            queued[job_id] = key
            if job.run_at <= due:
                heap = ready.get(job.queue)
                if heap is None:
                    heap = ready[job.queue] = []
                heap.append((-job.priority, key, job_id))
            else:
                delayed.append((job.run_at, key, job_id))
        state._seq = seq
        state._fifo = not queued  # (not known in order: sorted at the next snapshot)
        heapq.heapify(delayed)
        for heap in ready.values():
            heapq.heapify(heap)
        return state

    def _from_index(self, snap: Snapshot, index: SnapshotIndex, now: float | None) -> None:
        """`from_snapshot` from the snapshot's columns (`snap.jobs` are Blocks, see
        snapshot.load): the same indexes as its loop over the jobs builds, without
        reading a job (but those with `after`, to block them)."""
        ids = column(index.ids, "q")
        id_list = ids.tolist()
        self.jobs = Jobs(
            dict(
                zip(
                    id_list,
                    itertools.chain.from_iterable(
                        itertools.repeat(b, len(b))  # type: ignore[arg-type]
                        for b in snap.jobs
                    ),
                    strict=True,
                )
            )
        )
        self.counts = {(q, st): n for q, st, n in index.counts}
        self.keys = dict(index.keys)
        for st, packed in index.listed.items():
            self._listed[st] = dict.fromkeys(column(packed, "q").tolist())
        order = snap.queue_order()
        n = len(order)
        status, flags = index.status, index.flags
        priority, queue = column(index.priority, "q"), column(index.queue, "I")
        run_at = column(index.run_at, "d")
        due = -math.inf if now is None else now  # without a clock, everything waits
        pending = STATUS_CODE["pending"]
        if (
            n
            and n == len(ids)
            and due != -math.inf
            and bytes(status).count(pending) == n
            and bytes(flags).count(0) == n
            and len(index.queues) == 1
            and max(run_at) <= due
            and ids == (order if isinstance(order, memoryview | array) else array("q", order))
        ):
            # Every job waiting, due and pending, in one queue, in id order, none blocked
            # (a restart of a backlog): at C speed, each id one int object for all maps.
            # (ascending ids from 1 up: each job's sequence number is its id, _next_seq)
            self._queued = dict(zip(id_list, id_list, strict=True))
            self._queued_in_bulk(id_list)
            entries = list(zip(map(operator.neg, priority), id_list, id_list, strict=True))
            if min(priority) != max(priority):
                heapq.heapify(entries)
            else:  # sorted already, so a heap
                self._sorted.add(index.queues[0])
            self._ready[index.queues[0]] = entries
            self._seq = id_list[-1]
            return
        at = dict(zip(id_list, range(len(id_list)), strict=True)) if n else {}
        queues, queued, ready, delayed = index.queues, self._queued, self._ready, self._delayed
        retrying = STATUS_CODE["retrying"]
        seq = 0
        for job_id in order:
            i = at[job_id]
            job_id = id_list[i]  # (the jobs map's int object, not another)
            seq = seq + 1 if seq >= job_id else job_id  # (see _next_seq)
            if flags[i] & HAS_AFTER:
                job = self.jobs[job_id]
                if self.waits_for(job):
                    self._seq = seq
                    self._block(job)
                    seq = self._seq
                    continue
            key = seq - RETRY_FIRST if status[i] == retrying else seq
            queued[job_id] = key
            when = run_at[i]
            if when <= due:
                name = queues[queue[i]]
                heap = ready.get(name)
                if heap is None:
                    heap = ready[name] = []
                heap.append((-priority[i], key, job_id))
            else:
                delayed.append((when, key, job_id))
        self._seq = seq
        self._fifo = not queued  # (not known in order: sorted at the next snapshot)
        heapq.heapify(delayed)
        for heap in ready.values():
            heapq.heapify(heap)

    def _ready_in_bulk(self, ordered: list[Job], due: float) -> bool:
        """`from_snapshot`'s waiting jobs onto their heap at C speed, in the common case
        (one queue, all due, none blocked or retrying); False, with nothing done, if not.

        The ids are the jobs' own int objects and each sequence number is one object in
        both `_queued` and the heap entry: a million extra ints would be 32 MB.
        """
        if not ordered or due == -math.inf:
            return False
        queue = ordered[0].queue
        statuses = set(map(_STATUS, ordered))
        if (
            statuses != {"pending"}
            or any(map(_AFTER, ordered))
            or max(map(_RUN_AT, ordered)) > due
            or set(map(_QUEUE, ordered)) != {queue}
        ):
            return False
        ids = list(map(_ID, ordered))
        keys = self._seqs(ids)
        self._queued = dict(zip(ids, keys, strict=True))
        self._queued_in_bulk(ids)
        heap = list(zip(map(operator.neg, map(_PRIORITY, ordered)), keys, ids, strict=True))
        heapq.heapify(heap)  # already a heap when every priority is the same: O(n) check
        self._ready[queue] = heap
        return True

    # ------------------------------------------------------------------- helpers

    def _add(self, jobs: Iterable[Job]) -> None:
        """Submitted jobs into the table and the indexes, in order.

        One loop with its lookups hoisted: a batch of 10,000 jobs goes through here on the
        request's way to its answer, so this is what a batch costs per job.
        """
        if isinstance(jobs, list) and len(jobs) >= BULK and self._add_in_bulk(jobs):
            return
        share, table, counts, keys = self.share, self.jobs.data, self.counts, self.keys
        next_id = self.next_id
        for job in jobs:
            share(job)
            table[job.id] = job
            if job.id >= next_id:
                next_id = job.id + 1
            k = (job.queue, job.status)
            counts[k] = counts.get(k, 0) + 1
            if job.key is not None and job.status not in FINISHED:
                keys[job.key] = job.id
            if job.status in LISTED:
                self._listed[job.status][job.id] = None
            if job.status in WAITING:
                if job.after and self.waits_for(job):
                    self._block(job)
                else:
                    self._enqueue(job)
        self.next_id = next_id

    def _add_in_bulk(self, jobs: list[Job]) -> bool:
        """`_add` of a batch at C speed, in the usual case (one queue, all pending and due
        at once, no key, no --after); False, with nothing done, if not.

        A batch of 10,000 is what `submit --batch` sends and what a journal replay reads
        in one record: one by one, this was most of the time of a restart that replayed
        them (bench/bench_restart.py). The same effects as the loop of `_add`, in order:
        the sequence numbers are consecutive, one object shared by `_queued` and the heap.
        """
        if bulk_queue(jobs) is None:
            return False
        self.share.all(jobs)
        ids = list(map(_ID, jobs))
        self.jobs.data.update(zip(ids, jobs, strict=True))
        self.next_id = max(self.next_id, max(ids) + 1)
        k = (jobs[0].queue, "pending")
        self.counts[k] = self.counts.get(k, 0) + len(jobs)
        seqs = self._seqs(ids)
        self._queued.update(zip(ids, seqs, strict=True))
        self._queued_in_bulk(ids)
        self._push_run(jobs[0].queue, list(map(_PRIORITY, jobs)), seqs, ids)
        return True

    def _add_block(self, block: Block) -> None:
        """`_add_in_bulk` of a journal batch's jobs left in their stored bytes: the
        journal said it was such a batch (journal.decode_record_encoded), so the same
        effects, read from the block's columns."""
        queue = block.queues[0]
        ids = block.ids.tolist()
        self.jobs.data.update(zip(ids, itertools.repeat(block, len(ids)), strict=True))
        self.next_id = max(self.next_id, ids[-1] + 1)
        k = (queue, "pending")
        self.counts[k] = self.counts.get(k, 0) + len(ids)
        seqs = self._seqs(ids)
        self._queued.update(zip(ids, seqs, strict=True))
        self._queued_in_bulk(ids)
        self._push_run(queue, block.priority, seqs, ids)

    def _push_run(
        self, queue: str, priorities: Sequence[int], seqs: list[int], ids: list[int]
    ) -> None:
        """Put jobs queued in bulk (ascending `seqs`) on their queue's ready heap: of one
        priority their entries are a sorted run, appended in one go where the heap's
        list is sorted and ends before it (`_sorted`), else pushed one by one (in C)."""
        heap = self._ready.setdefault(queue, [])
        entries = list(zip(map(operator.neg, priorities), seqs, ids, strict=True))
        if (
            entries
            and (not heap or (queue in self._sorted and heap[-1] < entries[0]))
            and min(priorities) == max(priorities)
        ):
            if not heap:
                self._sorted.add(queue)
            heap.extend(entries)
            return
        self._sorted.discard(queue)
        push = functools.partial(heapq.heappush, heap)
        collections.deque(map(push, entries), maxlen=0)  # each pushed, in a loop in C

    def _next_seq(self, job_id: int) -> int:
        """The sequence number of the job queued next: one more than the last, or the
        job's id if that is more. Still increasing, so the order is the same; but a
        backlog queued in id order gets its ids as sequence numbers, the same int
        objects in the jobs map, `_queued` and the heap entry (32 bytes a job less)."""
        self._seq = seq = self._seq + 1 if self._seq >= job_id else job_id
        return seq

    def _seqs(self, ids: list[int]) -> list[int]:
        """`_next_seq` of each of `ids` in turn (at C speed when they ascend past it)."""
        if ids and ids[0] > self._seq and all(map(operator.lt, ids, ids[1:])):
            self._seq = ids[-1]
            return ids
        return [self._next_seq(i) for i in ids]

    def _queued_in_bulk(self, ids: list[int]) -> None:
        """`_fifo` after `ids` were queued, in this order, with ascending sequence
        numbers."""
        if self._fifo and ids:
            if ids[0] <= self._fifo_last or not all(map(operator.lt, ids, ids[1:])):
                self._fifo = False
            self._fifo_last = ids[-1]

    def _remove(self, ids: Iterable[int]) -> None:
        for job_id in ids:
            job = self.jobs.pop(job_id)
            self._count(job, -1)
            self._queued.pop(job_id, None)
            self._blocked.pop(job_id, None)
            if job.key is not None and self.keys.get(job.key) == job_id:
                del self.keys[job.key]
        self._compact()

    def _compact(self) -> None:
        """Rebuild the maps that hold far fewer entries than their tables have room for,
        and drop what is left of queues that have no job.

        A Python dict never shrinks when entries are deleted: one that once held a million
        jobs keeps a table for a million (about 40 MB) until it is rebuilt, however few it
        holds now. New entries reuse that room, so memory is bounded by the peak, but a
        daemon that once took a burst of a million jobs would hold the burst's tables for
        months. So after jobs are forgotten (`clear`, retention), each map whose table is
        over `SHRINK_FACTOR` times what its entries need (and over `SHRINK_FLOOR` bytes)
        is copied into a new one, sized to what it holds: O(entries), and rare (the map
        must have shrunk eightfold since it was last built). Also dropped: the (queue,
        status) counts at zero, the heaps' entries of jobs gone from the queue, and the
        empty ready heaps of queues, so queue names that come and go leave nothing behind
        either.
        """
        for name in ("jobs", "keys", "_queued", "_blocked", "_dependents"):
            table = getattr(self, name)
            size = sys.getsizeof(table)
            if size > SHRINK_FLOOR and size > SHRINK_FACTOR * DICT_ENTRY_BYTES * len(table):
                setattr(self, name, table.compacted() if name == "jobs" else dict(table))
        for k in [k for k, n in self.counts.items() if not n]:
            del self.counts[k]
        # Heap entries of jobs that left the queue some other way than by being claimed
        # (cancelled, cleared, taken back) stay until they reach the top: in a paused
        # queue, or behind a delay, that may be never. Once they outnumber the live
        # ones, the heap is rebuilt without them.
        queued = self._queued
        for queue, heap in list(self._ready.items()):
            waiting = self.counts.get((queue, "pending"), 0) + self.counts.get(
                (queue, "retrying"), 0
            )
            if len(heap) > 2 * waiting + 64:
                heap[:] = [e for e in heap if queued.get(e[2]) == e[1]]
                heapq.heapify(heap)
                self._sorted.discard(queue)
            if not heap:
                del self._ready[queue]
                self._sorted.discard(queue)
        if len(self._delayed) > 2 * len(queued) + 64:
            self._delayed = [e for e in self._delayed if queued.get(e[2]) == e[1]]
            heapq.heapify(self._delayed)

    def _count(self, job: Job, delta: int) -> None:
        k = (job.queue, job.status)
        self.counts[k] = self.counts.get(k, 0) + delta
        listed = self._listed.get(job.status)
        if listed is not None:
            if delta > 0:
                listed[job.id] = None
            else:
                listed.pop(job.id, None)

    def _set_status(self, job: Job, status: Status) -> None:
        self._count(job, -1)
        job.status = status
        self._count(job, +1)

    def _finish(self, job: Job, status: Status, at: float) -> None:
        self._set_status(job, status)
        self._queued.pop(job.id, None)
        self._blocked.pop(job.id, None)
        job.finished_at, job.pid, job.pid_started = at, None, None
        if job.key is not None and self.keys.get(job.key) == job.id:
            del self.keys[job.key]

    def _enqueue(self, job: Job) -> None:
        self._blocked.pop(job.id, None)
        if self._fifo and (job.id <= self._fifo_last or job.status == "retrying"):
            self._fifo = False
        self._fifo_last = job.id
        seq = self._next_seq(job.id)
        key = seq - RETRY_FIRST if job.status == "retrying" else seq
        self._queued[job.id] = key
        if job.run_at <= job.created_at:
            # Due from the moment it was submitted: no need to pass through the delayed
            # heap (the same order, one heap operation instead of three, no clock read).
            self._push(job.queue, (-job.priority, key, job.id))
        else:
            heapq.heappush(self._delayed, (job.run_at, key, job.id))

    def _push(self, queue: str, entry: tuple[int, int, int]) -> None:
        """One entry onto a ready heap (its list stays sorted if it goes last)."""
        heap = self._ready.setdefault(queue, [])
        if heap and entry < heap[-1]:
            self._sorted.discard(queue)
        heapq.heappush(heap, entry)

    def _enqueue_or_block(self, job: Job) -> None:
        if self.waits_for(job):
            self._block(job)
        else:
            self._enqueue(job)

    def _block(self, job: Job) -> None:
        self._seq += 1
        self._blocked[job.id] = self._seq
        for dep in self.waits_for(job):
            self._dependents.setdefault(dep, []).append(job.id)

    def _release(self, job_id: int, at: float) -> None:
        """A job ended: start what waited on it, or cancel it (and what waits on that)."""
        job = self.jobs[job_id]
        # In the order they were blocked: a job cancelled and retried while it waited has
        # a stale earlier entry too, and a restored state knows only the `_blocked` order.
        waiting = {d for d in self._dependents.pop(job_id, ()) if d in self._blocked}
        for dependent_id in sorted(waiting, key=self._blocked.__getitem__):
            dependent = self.jobs[dependent_id]
            if dependent.status not in WAITING:
                continue
            if job.status == "completed":
                if dependent_id not in self._queued and not self.waits_for(dependent):
                    self._enqueue(dependent)
            else:
                self._finish(dependent, "cancelled", at)
                dependent.error = f"job {job_id}, which it runs after, {job.status}"
                self._cascaded.append(dependent)
                self._release(dependent_id, at)

    def _promote(self, now: float) -> None:
        """Move delayed jobs whose time has come onto their queue's ready heap."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, seq, job_id = heapq.heappop(delayed)
            if self._queued.get(job_id) != seq:
                continue
            job = self.jobs[job_id]
            self._push(job.queue, (-job.priority, seq, job_id))
