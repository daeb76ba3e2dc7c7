"""A hypothesis state machine that drives `phxqd.local.state.State` through its decisions and
`apply`, as the daemon does, against a small reference model.

Everything here is pure: no daemon, no clock, no disk. The helpers and the tables of
queues, keys and delays are test_state.py's, shared with its snapshot round trip.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

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
    Started,
    submitted_jobs,
)
from phxqd.local.state import BACKOFF_BASE, BACKOFF_JITTER, BACKOFF_MAX, QueueDefaults, State
from phxqd.model import DEFAULT_RETRIES, FINISHED, NO_RETRY_EXIT, WAITING, JobSpec
from phxqd.model import Progress as JobProgress
from phxqd.protocol import Refused
from phxqd.schedules import due, fire_key, run_key
from phxqd.schedules_model import OVERLAPS, ScheduleSpec
from tests.test_state import (
    CONFIG_LIMITS,
    DEFAULTS,
    DELAYS,
    KEYS,
    OWN_BACKOFF,
    QUEUES,
    T0,
    _event_decoder,
    claim_all,
    jobs_of,
    live_keys,
    recount,
    recount_queues,
    restore,
    same_state,
    spec,
)


@dataclass
class MJob:
    """The model's view of one job."""

    status: str
    queue: str
    prio: int
    key: str | None
    run_at: float
    max_retries: int
    backoff: tuple[float, float, float]
    after: tuple[int, ...]
    attempts: int = 0
    #: when it was last put on a heap; jobs released together share one value
    enq: int = 0


AMONG = st.sampled_from(["fitting", "fitting", "any", "unknown"])


def _batches(min_size: int, max_size: int) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Specs to submit: queue, priority, key, delay, retries, backoff, --after picks."""
    return st.lists(
        st.tuples(
            st.sampled_from(QUEUES),
            st.integers(-2, 2),
            st.sampled_from(KEYS),
            st.sampled_from(DELAYS),
            st.sampled_from([None, 0, 1, 2]),
            st.sampled_from(OWN_BACKOFF),
            st.lists(st.integers(0, 100), max_size=2),
        ),
        min_size=min_size,
        max_size=max_size,
    )


class QueueMachine(RuleBasedStateMachine):
    """Drives State only through its decisions and `apply`, as the daemon does, and keeps a
    small reference model next to it (`MJob` per id, pauses, limits)."""

    def __init__(self) -> None:
        super().__init__()
        self.state = State()
        self.now = T0
        self.journal: list[bytes] = []
        self.jobs: dict[int, MJob] = {}
        self.next_enq = 0
        self.next_id = 1
        self.paused: set[str] = set()
        self.paused_all = False
        self.limits: dict[str, int] = {}
        self.rates: dict[str, tuple[float, int]] = {}
        #: schedule name -> (its recorded last fire, the job of its last firing)
        self.schedules: dict[str, tuple[float | None, int | None]] = {}
        #: every key a firing ever gave a job: a fire time makes at most one job, ever
        self.fire_keys: set[str] = set()

    # -------------------------------------------------------------- plumbing

    def apply(self, events: list[AnyEvent]) -> None:
        for event in events:
            # encoded before it is applied, as the journal does
            self.journal.append(msgspec.msgpack.encode(event))
            self.state.apply(event)

    def replay(self) -> State:
        state = State()
        for record in self.journal:
            state.apply(_event_decoder.decode(record))
        return state

    def ids(self, *statuses: str) -> list[int]:
        return sorted(i for i, j in self.jobs.items() if j.status in statuses)

    def live_keys(self) -> dict[str, int]:
        return {
            j.key: i for i, j in self.jobs.items() if j.key is not None and j.status not in FINISHED
        }

    def blocked(self, i: int) -> bool:
        return any(
            d in self.jobs and self.jobs[d].status != "completed" for d in self.jobs[i].after
        )

    def busy(self) -> Counter[str]:
        return Counter(j.queue for j in self.jobs.values() if j.status == "running")

    def at_limit(self, queue: str) -> bool:
        limit = self.limits.get(queue, CONFIG_LIMITS.get(queue))
        return limit is not None and self.busy()[queue] >= limit

    def ready(self) -> list[int]:
        if self.paused_all:
            return []
        return [
            i
            for i, j in self.jobs.items()
            if j.status in WAITING
            and j.run_at <= self.now
            and j.queue not in self.paused
            and not self.at_limit(j.queue)
            and not self.blocked(i)
        ]

    def rank(self, i: int) -> tuple[int, int, int]:
        """Priority first; within it a due retry before pending jobs; then FIFO."""
        j = self.jobs[i]
        return (-j.prio, 0 if j.status == "retrying" else 1, j.enq)

    def enqueue(self, ids: list[int], together: bool = False) -> None:
        for i in ids:
            if not together or i == ids[0]:
                self.next_enq += 1
            self.jobs[i].enq = self.next_enq

    def ended(self, i: int, status: str) -> None:
        """A job finished: release or cancel (transitively) what waits on it."""
        self.jobs[i].status = status
        waiting = [k for k, j in self.jobs.items() if j.status in WAITING and i in j.after]
        if status == "completed":
            self.enqueue([k for k in waiting if not self.blocked(k)], together=True)
        else:
            for k in waiting:
                if self.jobs[k].status in WAITING:
                    self.ended(k, "cancelled")

    # ----------------------------------------------------------------- rules

    @initialize(batch=_batches(1, 6))
    def some_jobs(self, batch: list[tuple[Any, ...]]) -> None:
        """Every run starts with a few jobs, so the other rules have something to act on."""
        self.submit(batch, False)

    @rule(batch=_batches(1, 3), unknown_dep=st.booleans())
    def submit(self, batch: list[tuple[Any, ...]], unknown_dep: bool) -> None:
        known = sorted(self.jobs)
        specs = []
        for q, p, k, d, r, b, picks in batch:
            after = [known[x % len(known)] for x in picks] if known else []
            specs.append(
                spec(queue=q, priority=p, key=k, delay=d, max_retries=r, backoff=b, after=after)
            )
        if unknown_dep and known:
            specs[-1].after.append(self.next_id + 10)
        before = jobs_of(self.state)
        expected_error = None
        for sp in specs:
            for dep in sp.after:
                if expected_error is None and dep not in self.jobs:
                    expected_error = "not_found"
                elif expected_error is None and self.jobs[dep].status in ("failed", "cancelled"):
                    expected_error = "refused"
        try:
            events, results = self.state.submit(specs, self.now, DEFAULTS)
        except Refused as e:
            assert e.code == expected_error
            return
        finally:
            assert jobs_of(self.state) == before, "submit() changed the state"
        assert expected_error is None
        assert len(results) == len(specs)
        live = self.live_keys()
        new: list[int] = []
        for sp, res in zip(specs, results, strict=True):
            if sp.key is not None and sp.key in live:
                assert res.deduplicated
                assert res.job.id == live[sp.key]
                continue
            assert not res.deduplicated
            i = self.next_id
            assert res.job.id == i
            self.next_id += 1
            qd = DEFAULTS.get(sp.queue, QueueDefaults())
            m = MJob(
                status="pending",
                queue=sp.queue,
                prio=sp.priority,
                key=sp.key,
                run_at=self.now + sp.delay if sp.delay else self.now,
                max_retries=sp.max_retries
                if sp.max_retries is not None
                else qd.max_retries
                if qd.max_retries is not None
                else DEFAULT_RETRIES,
                backoff=sp.backoff or qd.backoff or (BACKOFF_BASE, BACKOFF_MAX, BACKOFF_JITTER),
                after=tuple(sorted(set(sp.after))),
            )
            job = res.job
            assert (job.queue, job.priority, job.key, job.status) == (
                m.queue,
                m.prio,
                m.key,
                m.status,
            )
            assert (job.run_at, job.max_retries, job.after or ()) == (
                m.run_at,
                m.max_retries,
                m.after,
            )
            self.jobs[i] = m
            new.append(i)
            if sp.key is not None:
                live[sp.key] = i
        assert [j.id for e in events for j in submitted_jobs(e)] == new
        assert len(events) == min(len(new), 1)
        self.apply(events)
        self.enqueue([i for i in new if not self.blocked(i)])

    def start_next(self) -> int | None:
        """claim_next, checked against the model, then Started as the dispatcher does."""
        ready = self.ready()
        job = self.state.claim_next(self.now, None, self.busy(), CONFIG_LIMITS)
        if job is None:
            assert not ready, f"claim_next returned None with {ready} ready at {self.now}"
            return None
        i = job.id
        assert job.status in WAITING, job
        assert job.run_at <= self.now, (job.run_at, self.now)
        assert not self.paused_all
        assert job.queue not in self.paused
        assert i in ready, (i, ready)
        assert job.priority == max(self.jobs[r].prio for r in ready)
        assert self.rank(i) == min(self.rank(r) for r in ready), (i, ready)
        self.apply([Started(i, self.now, 1000 + i, self.now)])
        self.jobs[i].status = "running"
        self.jobs[i].attempts += 1
        return i

    def end(self, i: int, code: int | None, retryable: bool, seed: int) -> None:
        """outcome() of a running job, checked against the model, then applied."""
        m = self.jobs[i]
        error = "timed out" if code is None else None
        event = self.state.outcome(i, code, error, self.now, random.Random(seed), retryable)
        retry_at = None
        if code == 0:
            assert event == Completed(i, self.now, 0)
        else:
            assert isinstance(event, Failed)
            assert (event.id, event.at, event.exit_code) == (i, self.now, code)
            if retryable and code != NO_RETRY_EXIT and m.attempts <= m.max_retries:
                base, cap, jitter = m.backoff
                delay = min(base * 2 ** (m.attempts - 1), cap)
                assert event.retry_at is not None
                assert self.now + delay <= event.retry_at <= self.now + delay * (1 + jitter)
                retry_at = event.retry_at
            else:
                assert event.retry_at is None
        self.apply([event])
        if code == 0:
            self.ended(i, "completed")
        elif retry_at is None:
            self.ended(i, "failed")
        else:
            m.status, m.run_at = "retrying", retry_at
            self.enqueue([i])

    @precondition(lambda self: self.ids(*WAITING))
    @rule()
    def claim(self) -> None:
        self.start_next()

    @precondition(lambda self: self.ids("running"))
    @rule(
        index=st.integers(0, 100),
        code=st.sampled_from([0, 1, 2, NO_RETRY_EXIT, None]),
        retryable=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def finish(self, index: int, code: int | None, retryable: bool, seed: int) -> None:
        running = self.ids("running")
        if running:
            self.end(running[index % len(running)], code, retryable, seed)

    @precondition(lambda self: self.ids(*WAITING))
    @rule(
        code=st.sampled_from([0, 0, 1, 2, NO_RETRY_EXIT, None]),
        retryable=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def run_one(self, code: int | None, retryable: bool, seed: int) -> None:
        """The common path in one step: claim, start and end the next job."""
        i = self.start_next()
        if i is not None:
            self.end(i, code, retryable, seed)

    @precondition(lambda self: self.ids("running"))
    @rule(index=st.integers(0, 100))
    def requeue(self, index: int) -> None:
        running = self.ids("running")
        if not running:
            return
        i = running[index % len(running)]
        self.apply([Requeued(i)])
        self.jobs[i].status = "pending"
        self.jobs[i].attempts -= 1
        self.enqueue([i])

    @precondition(lambda self: self.ids("running"))
    @rule(index=st.integers(0, 100), percent=st.floats(0, 100))
    def progress(self, index: int, percent: float) -> None:
        running = self.ids("running")
        if running:
            i = running[index % len(running)]
            self.apply([ProgressSaved(i, JobProgress(self.now, percent=percent))])

    def pick(self, picks: list[int], among: str, *fitting: str) -> list[int]:
        """Distinct ids: of jobs in a fitting status, or of any job (plus an unknown one)."""
        known = self.ids(*fitting) if among == "fitting" else sorted(self.jobs)
        ids = list(dict.fromkeys(known[p % len(known)] for p in picks)) if known else []
        if among == "unknown":
            ids.append(self.next_id + 5)
        return ids

    @precondition(lambda self: self.jobs)
    @rule(picks=st.lists(st.integers(0, 100), max_size=3), among=AMONG)
    def cancel(self, picks: list[int], among: str) -> None:
        ids = self.pick(picks, among, *WAITING, "running")
        try:
            events, running = self.state.cancel(ids, self.now)
        except Refused as e:
            if among == "unknown":
                assert e.code == "not_found"
            else:
                assert e.code == "refused"
                assert any(self.jobs[i].status in FINISHED for i in ids)
            return
        assert among != "unknown"
        assert not any(self.jobs[i].status in FINISHED for i in ids)
        waiting = [i for i in ids if self.jobs[i].status in WAITING]
        assert events == [Cancelled(i, self.now, "cancelled") for i in waiting]
        assert running == [i for i in ids if self.jobs[i].status == "running"]
        # the pool stops the running ones; the daemon records them as cancelled
        self.apply([*events, *(Cancelled(i, self.now, "cancelled") for i in running)])
        for i in [*waiting, *running]:
            self.ended(i, "cancelled")

    @precondition(lambda self: self.jobs)
    @rule(picks=st.lists(st.integers(0, 100), min_size=1, max_size=3), among=AMONG)
    def retry(self, picks: list[int], among: str) -> None:
        ids = self.pick(picks, among, "failed", "cancelled")
        live = self.live_keys()
        try:
            events = self.state.retry(ids, self.now)
        except Refused as e:
            if among == "unknown":
                assert e.code == "not_found"
            else:
                assert e.code == "refused"
                keys = [self.jobs[i].key for i in ids if self.jobs[i].key is not None]
                assert (
                    len(keys) != len(set(keys))
                    or any(k in live for k in keys)
                    or any(self.jobs[i].status not in ("failed", "cancelled") for i in ids)
                    or any(
                        d in self.jobs and self.jobs[d].status in ("failed", "cancelled")
                        for i in ids
                        for d in self.jobs[i].after
                    )
                )
            return
        assert among != "unknown"
        keys = [self.jobs[i].key for i in ids if self.jobs[i].key is not None]
        assert len(keys) == len(set(keys)), "two jobs of one key revived"
        for i in ids:
            assert self.jobs[i].status in ("failed", "cancelled")
            assert self.jobs[i].key is None or self.jobs[i].key not in live
            assert not any(
                d in self.jobs and self.jobs[d].status in ("failed", "cancelled")
                for d in self.jobs[i].after
            )
        assert events == ([Retried(ids, self.now)] if ids else [])
        self.apply(events)
        self.revive(ids)

    def revive(self, ids: list[int]) -> None:
        for i in ids:
            m = self.jobs[i]
            m.status, m.attempts, m.run_at = "pending", 0, self.now
            if not self.blocked(i):
                self.enqueue([i])

    @precondition(lambda self: self.ids("failed"))
    @rule(queue=st.sampled_from((None, *QUEUES)))
    def retry_failed(self, queue: str | None) -> None:
        live = self.live_keys()
        plain: list[int] = []
        newest: dict[str, int] = {}
        for i in self.ids("failed"):
            m = self.jobs[i]
            if queue is not None and m.queue != queue:
                continue
            if any(
                d in self.jobs and self.jobs[d].status in ("failed", "cancelled") for d in m.after
            ):
                continue
            if m.key is None:
                plain.append(i)
            elif m.key not in live:
                newest[m.key] = i
        expected = sorted([*plain, *newest.values()])
        events = self.state.retry_failed(queue, self.now)
        assert events == ([Retried(expected, self.now)] if expected else [])
        self.apply(events)
        self.revive(expected)

    @rule(
        status=st.sampled_from(
            [None, "completed", "failed", "cancelled", "pending", "running", "retrying", "x"]
        ),
        queue=st.sampled_from((None, *QUEUES)),
    )
    def clear(self, status: str | None, queue: str | None) -> None:
        try:
            events = self.state.clear(status, queue)
        except Refused as e:
            assert e.code == "usage"
            assert status not in FINISHED
            return
        assert status is None or status in FINISHED
        wanted = FINISHED if status is None else {status}
        expected = [
            i
            for i, j in self.jobs.items()
            if j.status in wanted and (queue is None or j.queue == queue)
        ]
        assert events == ([Cleared(expected)] if expected else [])
        self.apply(events)
        for i in expected:
            del self.jobs[i]

    @rule(
        queue=st.sampled_from((None, *QUEUES)),
        action=st.sampled_from(["pause", "resume", "limit", "unlimit"]),
        concurrency=st.integers(0, 2),
    )
    def control(self, queue: str | None, action: str, concurrency: int) -> None:
        """pause/resume a queue (None: all), or set/unset its concurrency at run time."""
        if action == "pause":
            self.apply([Paused(queue)])
            if queue is None:
                self.paused_all = True
            else:
                self.paused.add(queue)
        elif action == "resume":
            self.apply([Resumed(queue)])
            if queue is None:
                self.paused_all = False
                self.paused.clear()
            else:
                self.paused.discard(queue)
        elif queue is not None and action == "limit":
            self.apply([QueueSet(queue, concurrency)])
            self.limits[queue] = concurrency
        elif queue is not None:
            self.apply([QueueSet(queue, None)])
            self.limits.pop(queue, None)

    @rule(queue=st.sampled_from(QUEUES), per_second=st.sampled_from([None, 0.5, 10.0]))
    def rate(self, queue: str, per_second: float | None) -> None:
        self.apply([QueueRate(queue, per_second, 2)])
        if per_second is None:
            self.rates.pop(queue, None)
        else:
            self.rates[queue] = (per_second, 2)

    @rule(
        name=st.sampled_from(["a", "b"]),
        every=st.sampled_from([1.0, 5.0, 60.0]),
        overlap=st.sampled_from(OVERLAPS),
        catch_up=st.sampled_from(["skip", "once", "all"]),
    )
    def schedule(self, name: str, every: float, overlap: Any, catch_up: Any) -> None:
        """Add or replace a schedule: its record (last fire, last job) is kept."""
        job = JobSpec(argv=["true"], queue=QUEUES[0])
        sched = ScheduleSpec(name, job, every=every, overlap=overlap, catch_up=catch_up)
        self.apply(self.state.set_schedule(sched, self.now))
        self.schedules.setdefault(name, (None, None))

    @precondition(lambda self: self.schedules)
    @rule(pick=st.integers(0, 10), action=st.sampled_from(["remove", "pause", "resume"]))
    def schedule_control(self, pick: int, action: str) -> None:
        name = sorted(self.schedules)[pick % len(self.schedules)]
        if action == "remove":
            self.apply(self.state.remove_schedule(name))
            del self.schedules[name]
        else:
            self.apply(self.state.pause_schedule(name, action == "pause"))
            assert self.state.schedules[name].paused == (action == "pause")

    @precondition(lambda self: self.schedules)
    @rule(pick=st.integers(0, 10), manual=st.booleans())
    def fire(self, pick: int, manual: bool) -> None:
        """Fire what is due (or `schedule run`), checked against the model: the overlap
        policy, one job per fire time, the last fire recorded."""
        name = sorted(self.schedules)[pick % len(self.schedules)]
        sched = self.state.schedules[name]
        last_fire, last_job = self.schedules[name]
        plan = due(sched, self.now)
        if not manual and plan.latest is None:
            return
        times = plan.times or ([plan.latest] if plan.latest is not None else [])
        before = jobs_of(self.state)
        events, fired = self.state.fire(
            name,
            times,
            self.now,
            plan.missed,
            run_key if manual else fire_key,
            DEFAULTS,
            bool(plan.times),
            manual,
        )
        assert jobs_of(self.state) == before, "fire() changed the state"
        prev = self.jobs.get(last_job) if last_job is not None else None
        going = prev is not None and prev.status not in FINISHED
        if manual:
            times = [self.now]
        elif not plan.times:
            assert fired.skipped == "missed" and fired.job is None
        elif going and sched.spec.overlap == "queue":
            assert events == [] and fired.blocked_by == last_job
            return
        elif going and sched.spec.overlap == "skip":
            assert fired.job is None and fired.skipped
        new = [j.id for e in events for j in submitted_jobs(e)]
        assert new == [j.id for j in fired.jobs]
        for job in fired.jobs:
            assert job.key is not None
            if not manual:  # (`schedule run` fires no fire time)
                assert job.key not in self.fire_keys, job.key
                self.fire_keys.add(job.key)
            self.jobs[job.id] = MJob(
                status="pending",
                queue=job.queue,
                prio=0,
                key=job.key,
                run_at=self.now,
                max_retries=job.max_retries,
                backoff=job.backoff or (BACKOFF_BASE, BACKOFF_MAX, BACKOFF_JITTER),
                after=(),
            )
            self.next_id += 1
        self.apply(events)
        self.enqueue(new)
        recorded = last_fire if manual else times[-1]
        self.schedules[name] = (recorded, new[-1] if new else last_job)
        # the same fire time never fires again
        if recorded is not None:
            try:
                self.state.fire(name, [recorded], self.now, 0, fire_key, DEFAULTS)
            except Refused as e:
                assert e.code == "refused"
            else:
                raise AssertionError(f"{name} fired {recorded} twice")

    @rule(dt=st.sampled_from([0.25, 1.0, 2.0, 5.0, 30.0, 120.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: self.ids(*WAITING))
    @rule()
    def tick_to_wakeup(self) -> None:
        wakeup = self.state.next_wakeup()
        if wakeup is not None and wakeup > self.now:
            self.now = wakeup

    # ------------------------------------------------------------ invariants

    @invariant()
    def model_matches(self) -> None:
        s = self.state
        assert sorted(s.jobs) == sorted(self.jobs)
        for i, j in s.jobs.items():
            m = self.jobs[i]
            assert (j.status, j.attempts, j.queue, j.priority, j.key) == (
                m.status,
                m.attempts,
                m.queue,
                m.prio,
                m.key,
            ), i
            if j.status in WAITING:
                assert j.run_at == m.run_at
                assert s.waits_for(j) == [
                    d for d in m.after if d in self.jobs and self.jobs[d].status != "completed"
                ]
        assert s.next_id == self.next_id
        assert (s.paused, s.paused_all, s.limits) == (self.paused, self.paused_all, self.limits)
        assert s.rates == self.rates
        assert {n: (x.last_fire, x.last_job) for n, x in s.schedules.items()} == self.schedules

    @invariant()
    def counts_are_exact(self) -> None:
        summary = self.state.summary()
        assert summary["counts"] == recount(self.state)
        assert summary["queues"] == recount_queues(self.state)
        assert summary["total"] == len(self.state.jobs)
        assert self.state.summary()["counts"]["running"] == recount(self.state)["running"]

    @invariant()
    def one_live_job_per_key(self) -> None:
        live = live_keys(self.state)
        assert all(len(ids) == 1 for ids in live.values()), live
        assert self.state.keys == {k: ids[0] for k, ids in live.items()}
        assert self.state.keys == self.live_keys()

    @invariant()
    def waiting_jobs_never_wait_on_a_failed_one(self) -> None:
        for j in self.state.jobs.values():
            if j.status in WAITING:
                for d in j.after or ():
                    if d in self.state.jobs:
                        assert self.state.jobs[d].status not in ("failed", "cancelled"), (j, d)

    @invariant()
    def next_wakeup_is_a_waiting_job_time(self) -> None:
        queued = {
            i: j.run_at for i, j in self.jobs.items() if j.status in WAITING and not self.blocked(i)
        }
        future = [t for t in queued.values() if t > self.now]
        wakeup = self.state.next_wakeup()
        if future:
            assert wakeup is not None and wakeup <= min(future)
        if wakeup is not None:
            assert wakeup in queued.values()

    @invariant()
    def replay_is_deterministic(self) -> None:
        replayed = self.replay()
        same_state(replayed, self.state)
        # a replayed state hands out exactly the ready jobs, best rank first (with `busy`
        # fixed, a queue under its limit hands out all of its ready jobs)
        claimed = claim_all(replayed, self.now, self.busy(), CONFIG_LIMITS)
        assert sorted(claimed) == sorted(self.ready())
        ranks = [self.rank(i) for i in claimed]
        assert ranks == sorted(ranks), claimed

    @invariant()
    def snapshot_matches(self) -> None:
        for restore_now in (None, self.now):
            restored = restore(self.state, restore_now)
            same_state(restored, self.state)
            assert (restored.paused, restored.paused_all) == (self.paused, self.paused_all)
            busy = self.busy()
            assert claim_all(restored, self.now, busy, CONFIG_LIMITS) == claim_all(
                self.replay(), self.now, busy, CONFIG_LIMITS
            )


QueueMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestQueueMachine = QueueMachine.TestCase
