"""`LocalBackend`: the queue kept in this process (`State`) and made durable by the journal
in the state directory. It implements backend.Backend; see that module for the rules.

Each request method is the same three steps: the pure state decides (events, or Refused),
the recorder applies and journals them and waits until they are durable, then the answer
is read from the state. Claims are this backend's own bookkeeping: which jobs the
dispatcher holds (never taken back by a failed commit, never cancelled behind its back),
how many per queue (what concurrency limits count), and the jobs given back unstarted
(claimed again before any other).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from phxqd import joblogs, memory
from phxqd.backend import SHUTDOWN, Begun, Ending, Health, Summary
from phxqd.events import (
    AnyEvent,
    Cancelled,
    Cleared,
    Paused,
    ProgressSaved,
    QueueRate,
    QueueSet,
    Requeued,
    Resumed,
    Retried,
    Started,
)
from phxqd.feed import Feed
from phxqd.local.journal import Journal, JournalError
from phxqd.local.progress import Checkpoints
from phxqd.local.recorder import Recorder
from phxqd.local.snapshots import Snapshots
from phxqd.local.state import QueueDefaults, State
from phxqd.model import WAITING, Job, JobSpec, Progress, SubmitResult
from phxqd.notice import Notice
from phxqd.rates import Bucket, parse_rate
from phxqd.schedules import fire_key, run_key
from phxqd.schedules_model import Fired, Schedule, ScheduleSpec
from phxqd.settings import Settings
from phxqd.stats import Stats

#: forgetting this many jobs at once gives memory back to the system (`_forgotten`)
TRIM_AFTER = 1000


class LocalBackend:
    def __init__(
        self,
        state: State,
        journal: Journal,
        settings: Settings,
        rng: random.Random | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats or Stats()
        self.feed = Feed()
        self.wake = changed = Notice()
        self._state = state
        self._journal = journal
        self._rng = rng or random.Random()
        self._snapshots = Snapshots(state, journal, settings, self.stats, changed)
        self._recorder = Recorder(state, journal, self._snapshots, self.stats, self.feed, changed)
        self._checkpoints = Checkpoints(state, self.feed)
        self._progress_due = anyio.Event()
        #: jobs claimed by the dispatcher and not yet ended, and how many per queue
        self._claimed: set[int] = set()
        self._busy: Counter[str] = Counter()
        #: claimed jobs given back unstarted: claimed again before any other
        self._returned: deque[Job] = deque()
        #: ids below this may be claimed: their submission is durable (see `claimable`)
        self._durable_below = 0
        #: the settings' queue tables, and what submits and claims make of them
        self._queue_config: tuple[
            object, dict[str, QueueDefaults], dict[str, int], dict[str, tuple[float, int]]
        ] = (None, {}, {}, {})
        #: the token bucket of each queue with a start rate (its tokens are not journaled)
        self._buckets: dict[str, Bucket] = {}
        #: the queues whose bucket was empty at the last claim (see `next_wakeup`)
        self._blocked: list[str] = []
        #: when memory was last given back to the system (see `_forgotten`)
        self._trimmed = -math.inf
        #: background snapshots and healing, stopped by `close`
        self._upkeep = anyio.CancelScope()

    # ------------------------------------------------------------------ life
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._journal.run)
            tg.start_soon(self._in_scope, self._snapshots.run, self._upkeep)
            tg.start_soon(self._checkpointer)
            task_status.started()

    @staticmethod
    async def _in_scope(func: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
        with scope:
            await func()

    async def recover_host(self, kill_leftover: Callable[[Job], None]) -> int:
        now = time.time()
        events: list[AnyEvent] = []
        for job in list(self._state.by_status("running")):
            kill_leftover(job)
            events.append(
                self._state.outcome(job.id, None, "phxqd stopped while it ran", now, self._rng)
            )
        if events:
            await self._recorder.record(events)
        return len(events)

    async def close(self) -> None:
        """Snapshot, and close the journal.

        A background snapshot is stopped first (its child killed, see Snapshots), and so
        is healing: the stop's own snapshot says the last word.
        """
        self._upkeep.cancel()
        try:
            await self._snapshots.snapshot()
        finally:
            await self._journal.close()

    # -------------------------------------------------------------- requests
    async def submit(self, specs: list[JobSpec], now: float) -> list[SubmitResult]:
        events, results = self._state.submit(specs, now, self._queue_defaults())
        await self._recorder.commit(events, keep=self._claimed)
        return results

    def submit_then(
        self,
        specs: list[JobSpec],
        now: float,
        then: Callable[[list[SubmitResult] | Exception], None],
    ) -> None:
        """`submit` without an awaiting task (backend.SubmitsThen)."""
        events, results = self._state.submit(specs, now, self._queue_defaults())
        self._recorder.commit_then(events, then, results, keep=self._claimed)

    async def cancel(self, ids: list[int], now: float) -> list[int]:
        held = [i for i in ids if i in self._claimed]
        events, running = self._state.cancel([i for i in ids if i not in self._claimed], now)
        await self._recorder.commit(events)
        return [*running, *held]

    async def retry(self, ids: list[int], now: float) -> list[Job]:
        await self._recorder.commit(self._state.retry(ids, now))
        return [self._state.jobs[i] for i in ids]

    async def retry_failed(self, queue: str | None, now: float) -> int:
        events = self._state.retry_failed(queue, now)
        await self._recorder.commit(events)
        return sum(len(e.ids) for e in events if isinstance(e, Retried))

    async def clear(self, status: str | None, queue: str | None) -> list[int]:
        events = self._state.clear(status, queue)
        ids = [i for e in events if isinstance(e, Cleared) for i in e.ids]
        await self._forget(events, ids)
        return ids

    async def forget_finished_before(self, cutoff: float) -> list[int]:
        ids = self._state.finished_before(cutoff)
        if ids:
            await self._forget([Cleared(ids)], ids)
        return ids

    async def _forget(self, events: list[AnyEvent], ids: list[int]) -> None:
        """Commit the forgetting of `ids`, and remove the logs of those it forgot.

        Their logs go once they are forgotten in memory, even if the commit then does not
        return: cancelled while it waits for the disk (a stop: the record is written by
        the stop's snapshot), or refused after it was applied (a failed fsync: saved when
        the journal reopens). Nothing else would ever remove those logs. A commit the
        journal refused outright forgot nothing: the logs stay."""
        try:
            await self._recorder.commit(events)
        finally:
            jobs = self._state.jobs
            await joblogs.forget(self.settings.logs_dir, [i for i in ids if i not in jobs])
        await self._forgotten(len(ids))

    async def _forgotten(self, count: int) -> None:
        """Many jobs were forgotten: give the memory they held back to the system (see
        phxqd/memory.py), at most once a second."""
        now = time.monotonic()
        if count >= TRIM_AFTER and now - self._trimmed >= 1.0:
            self._trimmed = now
            await anyio.to_thread.run_sync(memory.give_back)

    async def set_limit(self, queue: str, concurrency: int | None) -> None:
        await self._recorder.commit([QueueSet(queue, concurrency)])

    async def pause(self, queue: str | None) -> None:
        await self._recorder.commit([Paused(queue)])

    async def resume(self, queue: str | None) -> None:
        await self._recorder.commit([Resumed(queue)])

    async def set_rate(self, queue: str, per_second: float | None, burst: int) -> None:
        await self._recorder.commit([QueueRate(queue, per_second, burst)])

    # ------------------------------------------------------------- schedules
    async def set_schedule(self, spec: ScheduleSpec, now: float, source: str) -> Schedule:
        await self._recorder.commit(self._state.set_schedule(spec, now, source))
        return self._state.schedule(spec.name)

    async def remove_schedule(self, name: str, source: str) -> None:
        await self._recorder.commit(self._state.remove_schedule(name, source))

    async def pause_schedule(self, name: str, paused: bool) -> Schedule:
        await self._recorder.commit(self._state.pause_schedule(name, paused))
        return self._state.schedule(name)

    async def schedules(self) -> list[Schedule]:
        return list(self._state.schedules.values())

    async def get_schedule(self, name: str) -> Schedule | None:
        return self._state.schedules.get(name)

    async def fire(
        self,
        name: str,
        times: list[float],
        now: float,
        missed: int,
        run: bool = True,
        manual: bool = False,
    ) -> Fired:
        events, fired = self._state.fire(
            name,
            times,
            now,
            missed,
            run_key if manual else fire_key,
            self._queue_defaults(),
            run,
            manual,
        )
        await self._recorder.commit(events, keep=self._claimed)
        return fired

    # --------------------------------------------------------------- running
    async def claimable(self) -> None:
        """Only jobs whose submission is durable may start: one that a crash could still
        take back must never have run."""
        below = self._state.next_id
        try:
            await self._journal.durable(self._recorder.last_submit_lsn)
        except JournalError:
            below = 0
        self._durable_below = below

    def claim(self, now: float) -> Job | None:
        state = self._state
        paused = state.paused
        for job in list(self._returned):
            if state.jobs.get(job.id) is not job or job.status not in WAITING:
                self._returned.remove(job)  # cancelled or cleared meanwhile
            elif not (state.paused_all or job.queue in paused):
                self._returned.remove(job)
                return self._hold(job)
        buckets = self._rate_buckets(now)
        blocked = [q for q, b in buckets.items() if not b.can_take(now)] if buckets else []
        self._blocked = blocked
        nxt = state.claim_next(now, self._durable_below, self._busy, self._config_limits(), blocked)
        if nxt is None:
            return None
        bucket = buckets.get(nxt.queue)
        if bucket is not None:
            bucket.take(now)
        return self._hold(nxt)

    def _rate_buckets(self, now: float) -> dict[str, Bucket]:
        """The bucket of each queue with a rate (run time over config), made or remade
        when its rate changed."""
        rates = self._rates()
        buckets = self._buckets
        if len(buckets) != len(rates) or any(q not in rates for q in buckets):
            for q in [q for q in buckets if q not in rates]:
                del buckets[q]
        for q, (per_second, burst) in rates.items():
            b = buckets.get(q)
            if b is None or b.per_second != per_second or b.burst != burst:
                buckets[q] = Bucket.full(per_second, burst, now)
        return buckets

    def _rates(self) -> dict[str, tuple[float, int]]:
        config = self._from_queue_config()[2]
        runtime = self._state.rates
        return {**config, **runtime} if runtime else config

    def _hold(self, job: Job) -> Job:
        self._claimed.add(job.id)
        self._busy[job.queue] += 1
        return job

    def _release(self, job: Job) -> None:
        if job.id in self._claimed:
            self._claimed.discard(job.id)
            self._busy[job.queue] -= 1

    def next_wakeup(self) -> float | None:
        wakeup = self._state.next_wakeup()
        if self._buckets:
            now = time.time()
            blocked = self._blocked
            for q, b in self._rate_buckets(now).items():
                # A bucket the last claim found empty counts even if a token has come
                # since (the claim's clock was a moment earlier): it is due now, not
                # never. Left out, a rate-limited queue slept until the next sweep, a
                # minute (an event loop whose timers fire a little early, uvloop's,
                # hit that moment almost every time).
                if q in blocked or not b.can_take(now):
                    at = b.ready_at(now)
                    wakeup = at if wakeup is None else min(wakeup, at)
        return wakeup

    def report(self, begun: list[Begun], ended: list[Ending]) -> None:
        events: list[AnyEvent] = [Started(b.job.id, b.at, b.pid, b.pid_started) for b in begun]
        now = time.time()
        for e in ended:
            job = e.job
            if e.started:
                events += self._checkpoints.take(job.id)
                if e.cancelled and e.stop_reason == SHUTDOWN:
                    events.append(Requeued(job.id))
                elif e.cancelled:
                    events.append(Cancelled(job.id, now, e.error or "cancelled"))
                else:
                    events.append(
                        self._state.outcome(
                            job.id, e.exit_code, e.error, now, self._rng, e.retryable, e.result
                        )
                    )
            elif e.stop_reason is None:  # never ran: it goes to another worker
                self._returned.append(job)
            elif e.stop_reason != SHUTDOWN:  # asked to stop before it ran: no attempt spent
                events.append(Cancelled(job.id, now, e.stop_reason))
            self._release(job)
        if ended:
            self._recorder.note_ends(events)
        elif events:  # nobody waits for a start to be durable: synced with the next end
            self._recorder.note(events, lazy=True)

    def progress(
        self, job_id: int, attempt: int, make: Callable[[Progress | None], Progress]
    ) -> bool:
        checkpoint = self._checkpoints.report(job_id, attempt, make, time.time())
        if checkpoint is False:
            return False
        if isinstance(checkpoint, ProgressSaved):
            self._recorder.note([checkpoint])  # not awaited: nobody waits for progress
        else:
            self._progress_due.set()
        return True

    async def _checkpointer(self) -> None:
        """Held progress reports become checkpoints once their interval has passed."""
        while True:
            due = self._checkpoints.next_due()
            if due is None:
                await self._progress_due.wait()
                self._progress_due = anyio.Event()
                continue
            await anyio.sleep(max(due - time.time(), 0.0))
            jobs = self._state.jobs
            checkpoints = [
                c
                for c in self._checkpoints.due(time.time())
                if c.id in jobs and jobs[c.id].status == "running"
            ]
            if checkpoints:
                self._recorder.note(list(checkpoints))

    def paused(self, queue: str) -> bool:
        return self._state.paused_all or queue in self._state.paused

    # --------------------------------------------------------------- queries
    async def get(self, job_id: int) -> Job:
        return self._state.get(job_id)

    async def find(self, job_id: int) -> Job | None:
        return self._state.jobs.get(job_id)

    async def select(
        self,
        status: str | None,
        queue: str | None,
        limit: int,
        *,
        before: int | None = None,
        label: str | None = None,
        key: str | None = None,
    ) -> list[Job]:
        return self._state.select(status, queue, limit, before=before, label=label, key=key)

    async def summary(self) -> Summary:
        s = self._state.summary()
        return Summary(
            s["counts"],  # type: ignore[arg-type]
            s["queues"],  # type: ignore[arg-type]
            len(self._state.jobs),
            sorted(self._state.paused),
            self._state.paused_all,
            dict(self._state.limits),
            {queue: n for queue, n in self._busy.items() if n},
            self._rates(),
            self._next_starts(),
            sorted(self._state.rates),
        )

    def _next_starts(self) -> dict[str, float]:
        now = time.time()
        return {
            q: b.ready_at(now) for q, b in self._rate_buckets(now).items() if not b.can_take(now)
        }

    def health(self, count_files: bool = False) -> Health:
        j = self._journal
        return Health(
            "journal",
            j.failed is None,
            None if j.failed is None else str(j.failed),
            j.policy,
            j.last_lsn,
            j.fsyncs,
            j.written_bytes,
            j.segments() if count_files else None,
        )

    async def wait(self, ids: list[int], timeout: float | None) -> list[Job]:
        return await self._recorder.wait(ids, timeout)

    async def log_elsewhere(self, job_id: int) -> tuple[str, bytes] | None:
        return None  # one host: every log is here

    def ended(self, job_id: int) -> anyio.Event:
        return self._recorder.ended(job_id)

    def waited_for(self) -> list[int]:
        return self._recorder.waited_for()

    def _queue_defaults(self) -> dict[str, QueueDefaults]:
        return self._from_queue_config()[0]

    def _config_limits(self) -> dict[str, int]:
        return self._from_queue_config()[1]

    def _from_queue_config(
        self,
    ) -> tuple[dict[str, QueueDefaults], dict[str, int], dict[str, tuple[float, int]]]:
        """What the `[queues.NAME]` tables say for submits (retries, backoff) and claims
        (limits), made again only when a reload put new tables in the settings: every
        submit and every claim asks."""
        queues = self.settings.queues
        if self._queue_config[0] is not queues:
            self._queue_config = (
                queues,
                {q: QueueDefaults(c.retries, c.backoff()) for q, c in queues.items()},
                {q: c.concurrency for q, c in queues.items() if c.concurrency is not None},
                {q: (parse_rate(c.rate), c.burst or 1) for q, c in queues.items() if c.rate},
            )
        return self._queue_config[1], self._queue_config[2], self._queue_config[3]
