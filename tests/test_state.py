"""The in-memory queue (`phxqd.local.state.State`): unit tests and snapshot round trips (the
hypothesis state machine, which shares the helpers below, is in test_state_machine.py).

Everything here is pure: no daemon, no clock, no disk. Times are plain numbers.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from phxqd.events import (
    AnyEvent,
    Cancelled,
    Cleared,
    Completed,
    Failed,
    Paused,
    ProgressSaved,
    QueueSet,
    Requeued,
    Resumed,
    Retried,
    Started,
    Submitted,
    SubmittedBatch,
    submitted_jobs,
)
from phxqd.local.state import (
    BACKOFF_BASE,
    BACKOFF_JITTER,
    BACKOFF_MAX,
    BULK,
    QueueDefaults,
    Refused,
    Snapshot,
    State,
)
from phxqd.model import (
    DEFAULT_RETRIES,
    FINISHED,
    NO_RETRY_EXIT,
    STATUSES,
    Call,
    Job,
    JobSpec,
)
from phxqd.model import Progress as JobProgress

T0 = 1000.0

_event_decoder: msgspec.msgpack.Decoder[AnyEvent] = msgspec.msgpack.Decoder(AnyEvent)
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)


# ------------------------------------------------------------------------- helpers


def spec(**kw: Any) -> JobSpec:
    return JobSpec(argv=["true"], **kw)


def apply_all(state: State, events: list[AnyEvent]) -> None:
    for event in events:
        state.apply(event)


def submit(state: State, now: float = T0, **kw: Any) -> Job:
    """Submit one job through the decision and apply it; return the job."""
    events, results = state.submit([spec(**kw)], now)
    apply_all(state, events)
    assert len(results) == 1
    return results[0].job


def start(state: State, now: float = T0, pid: int | None = 4242) -> Job | None:
    """Claim the next job and start it, as the dispatcher does."""
    job = state.claim_next(now)
    if job is not None:
        state.apply(Started(job.id, now, pid, now))
    return job


def fail(state: State, job_id: int, now: float, code: int = 1, retryable: bool = True) -> AnyEvent:
    event = state.outcome(job_id, code, None, now, random.Random(0), retryable)
    state.apply(event)
    return event


def _attempt(s: State, job_id: int, now: float) -> None:
    """Start `job_id`, which must be the next job claim_next hands out."""
    job = s.claim_next(now)
    assert job is not None and job.id == job_id
    s.apply(Started(job_id, now, 1, now))


def claim_all(
    state: State,
    now: float,
    busy: Mapping[str, int] | None = None,
    limits: Mapping[str, int] | None = None,
) -> list[int]:
    """Ids in the order claim_next hands them out (without starting them)."""
    out: list[int] = []
    while (job := state.claim_next(now, None, busy, limits)) is not None:
        out.append(job.id)
        assert len(out) <= len(state.jobs), "claim_next handed out a job twice"
    return out


def jobs_of(state: State) -> dict[int, Any]:
    return {i: msgspec.to_builtins(j) for i, j in state.jobs.items()}


def recount(state: State) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    counts.update(Counter(j.status for j in state.jobs.values()))
    return counts


def recount_queues(state: State) -> dict[str, dict[str, int]]:
    queues: dict[str, dict[str, int]] = {}
    for j in state.jobs.values():
        queues.setdefault(j.queue, dict.fromkeys(STATUSES, 0))[j.status] += 1
    return queues


def live_keys(state: State) -> dict[str, list[int]]:
    keys: dict[str, list[int]] = {}
    for j in state.jobs.values():
        if j.key is not None and not j.finished:
            keys.setdefault(j.key, []).append(j.id)
    return keys


def restore(state: State, now: float | None = None, lsn: int = 7) -> State:
    """Snapshot, through msgpack bytes as on disk (so no Job object is shared), and back."""
    data = msgspec.msgpack.encode(state.snapshot(lsn))
    snap = _snapshot_decoder.decode(data)
    assert snap.lsn == lsn
    return State.from_snapshot(snap, now)


def same_state(a: State, b: State) -> None:
    assert jobs_of(a) == jobs_of(b)
    assert list(a.jobs) == list(b.jobs)
    assert a.summary() == b.summary()
    assert a.keys == b.keys
    assert a.next_id == b.next_id
    assert a.limits == b.limits
    assert a.schedules == b.schedules
    assert a.rates == b.rates


@contextlib.contextmanager
def refused(code: str) -> Iterator[None]:
    """Expect `Refused` with this protocol error code."""
    with pytest.raises(Refused) as info:
        yield
    assert info.value.code == code, (info.value.code, info.value.message)


# ---------------------------------------------------------------- priority, FIFO


def test_higher_priority_first_fifo_within_a_priority() -> None:
    s = State()
    prios = [0, 5, -1, 5, 3, 0, -1, 5]
    ids = [submit(s, priority=p).id for p in prios]
    expected = sorted(ids, key=lambda i: (-prios[i - 1], i))
    assert claim_all(s, T0) == expected
    assert expected[:3] == [2, 4, 8]


def test_priority_and_fifo_hold_across_queues() -> None:
    s = State()
    a1 = submit(s, queue="a").id
    b1 = submit(s, queue="b").id
    a2 = submit(s, queue="a").id
    b_hi = submit(s, queue="b", priority=1).id
    assert claim_all(s, T0) == [b_hi, a1, b1, a2]


def test_fifo_is_by_submission_not_by_claim_time() -> None:
    """Jobs submitted earlier are claimed earlier, even after interleaved claims."""
    s = State()
    first = submit(s).id
    second = submit(s).id
    assert start(s).id == first
    third = submit(s).id
    assert claim_all(s, T0) == [second, third]


def test_a_due_retry_goes_before_pending_jobs_of_its_priority_fifo_among_retries() -> None:
    s = State()
    r1 = submit(s)
    r2 = submit(s)
    waiting = submit(s)  # queued before either retry
    assert start(s).id == r1.id
    assert start(s).id == r2.id
    late = fail(s, r2.id, T0)
    early = fail(s, r1.id, T0 + 0.1)
    assert isinstance(late, Failed) and isinstance(early, Failed)
    assert late.retry_at is not None and early.retry_at is not None
    urgent = submit(s, priority=1)
    low = submit(s, priority=-1)
    due = max(late.retry_at, early.retry_at)
    # r2 failed (and was queued again) first; a higher priority still comes first
    assert claim_all(s, due) == [urgent.id, r2.id, r1.id, waiting.id, low.id]


def test_retries_stay_first_and_fifo_across_a_snapshot() -> None:
    s = State()
    r1 = submit(s)
    r2 = submit(s)
    waiting = submit(s)
    _attempt(s, r1.id, T0)
    _attempt(s, r2.id, T0)
    fail(s, r1.id, T0)  # r1 is retrying when the snapshot is taken
    restored = restore(s)
    for state in (s, restored):
        fail(state, r2.id, T0 + 0.5)  # r2 only after it
    assert claim_all(restored, T0 + 100) == [r1.id, r2.id, waiting.id]
    assert claim_all(s, T0 + 100) == [r1.id, r2.id, waiting.id]


def test_ids_are_consecutive_and_next_id_advances() -> None:
    s = State()
    events, results = s.submit([spec(), spec(), spec()], T0)
    assert [r.job.id for r in results] == [1, 2, 3]
    assert s.next_id == 1, "a decision must not change the state"
    assert s.jobs == {}
    apply_all(s, events)
    assert s.next_id == 4
    assert [j.status for j in s.jobs.values()] == ["pending"] * 3


def test_below_id_passes_over_jobs_not_yet_durable() -> None:
    s = State()
    job = submit(s)
    assert s.claim_next(T0, below_id=job.id) is None
    claimed = s.claim_next(T0, below_id=job.id + 1)
    assert claimed is not None and claimed.id == job.id


# --------------------------------------------------------------------- delays


def test_delayed_job_waits_for_its_time() -> None:
    s = State()
    job = submit(s, now=T0, delay=10.0)
    assert job.run_at == T0 + 10.0
    assert s.next_wakeup() == T0 + 10.0
    assert s.claim_next(T0) is None
    assert s.claim_next(T0 + 9.999) is None
    assert s.next_wakeup() == T0 + 10.0
    claimed = s.claim_next(T0 + 10.0)
    assert claimed is not None and claimed.id == job.id
    assert s.next_wakeup() is None


def test_run_at_wins_over_delay_and_zero_delay_is_now() -> None:
    s = State()
    at = submit(s, now=T0, run_at=T0 + 50.0, delay=5.0)
    zero = submit(s, now=T0, delay=0.0)
    assert at.run_at == T0 + 50.0
    assert zero.run_at == T0
    assert s.next_wakeup() in (T0, T0 + 50.0)
    assert claim_all(s, T0 + 49) == [zero.id]
    assert s.next_wakeup() == T0 + 50.0
    assert claim_all(s, T0 + 50) == [at.id]


def test_delayed_high_priority_does_not_block_ready_low_priority() -> None:
    s = State()
    hi = submit(s, priority=9, delay=30.0)
    lo = submit(s, priority=-9)
    assert claim_all(s, T0) == [lo.id]
    assert claim_all(s, T0 + 30) == [hi.id]


def test_next_wakeup_is_the_earliest_and_skips_cancelled_jobs() -> None:
    s = State()
    assert s.next_wakeup() is None
    late = submit(s, delay=20.0)
    early = submit(s, delay=5.0)
    assert s.next_wakeup() == T0 + 5.0
    apply_all(s, s.cancel([early.id], T0)[0])
    assert s.next_wakeup() == T0 + 20.0
    apply_all(s, s.cancel([late.id], T0)[0])
    assert s.next_wakeup() is None
    assert s.claim_next(T0 + 100) is None


def test_once_due_the_delayed_job_is_ordered_by_priority_then_submission() -> None:
    s = State()
    delayed = submit(s, delay=5.0)
    later = submit(s)
    assert claim_all(s, T0 + 5) == [delayed.id, later.id]


# ----------------------------------------------------------- idempotency keys


def test_live_key_returns_existing_job_without_events() -> None:
    s = State()
    first = submit(s, key="k")
    for status_step in ("pending", "running", "retrying"):
        if status_step == "running":
            start(s)
        elif status_step == "retrying":
            fail(s, first.id, T0)
        assert s.jobs[first.id].status == status_step
        events, results = s.submit([spec(key="k", priority=7)], T0 + 1)
        assert events == []
        assert len(results) == 1
        assert results[0].deduplicated is True
        assert results[0].job is s.jobs[first.id]
    assert len(s.jobs) == 1
    assert s.keys == {"k": first.id}


def test_every_field_of_a_spec_lands_in_its_job() -> None:
    s = State()
    full = JobSpec(
        argv=["prog", "arg"],
        queue="q",
        priority=5,
        key="k",
        max_retries=7,
        backoff=(1.0, 2.0, 0.5),
        timeout=9.5,
        delay=3.0,
        label="lbl",
        cwd="/d",
        env={"A": "1"},
    )
    call = JobSpec(call=Call("m:f", [1], {"x": 2}))
    _, results = s.submit([full, call], T0)
    job, called = (r.job for r in results)
    assert msgspec.to_builtins(job) == {
        "id": 1,
        "argv": ("prog", "arg"),
        "queue": "q",
        "priority": 5,
        "status": "pending",
        "created_at": T0,
        "run_at": T0 + 3.0,
        "key": "k",
        "label": "lbl",
        "cwd": "/d",
        "env": {"A": "1"},
        "timeout": 9.5,
        "max_retries": 7,
        "backoff": (1.0, 2.0, 0.5),
        "after": None,
        "attempts": 0,
        "started_at": None,
        "finished_at": None,
        "exit_code": None,
        "error": None,
        "pid": None,
        "pid_started": None,
        "progress": None,
        "call": None,
        "result": None,
    }
    assert called.id == 2 and called.call == Call("m:f", [1], {"x": 2}) and called.argv == ()
    assert called.max_retries == DEFAULT_RETRIES and called.env is None


def test_key_deduplicates_within_one_batch() -> None:
    s = State()
    events, results = s.submit([spec(key="a"), spec(key="b"), spec(key="a"), spec()], T0)
    # the new jobs of one request are one event (one journal record)
    assert [[j.id for j in submitted_jobs(e)] for e in events] == [[1, 2, 3]]
    assert [r.deduplicated for r in results] == [False, False, True, False]
    assert results[2].job is results[0].job
    assert [r.job.id for r in results] == [1, 2, 1, 3]
    apply_all(s, events)
    assert s.keys == {"a": 1, "b": 2}
    assert s.next_id == 4


@pytest.mark.parametrize("how", ["completed", "failed", "cancelled"])
def test_key_can_be_reused_after_the_job_finishes(how: str) -> None:
    s = State()
    first = submit(s, key="k", max_retries=0)
    if how == "cancelled":
        apply_all(s, s.cancel([first.id], T0)[0])
    else:
        start(s)
        event = s.outcome(first.id, 0 if how == "completed" else 1, None, T0, random.Random(1))
        s.apply(event)
    assert s.jobs[first.id].status == how
    assert s.keys == {}
    events, results = s.submit([spec(key="k")], T0 + 1)
    assert len(events) == 1
    assert results[0].deduplicated is False
    assert results[0].job.id != first.id
    apply_all(s, events)
    assert s.keys == {"k": results[0].job.id}


def test_clearing_a_finished_keyed_job_keeps_the_live_key() -> None:
    s = State()
    old = submit(s, key="k")
    apply_all(s, s.cancel([old.id], T0)[0])
    new = submit(s, key="k")
    apply_all(s, s.clear(None, None))
    assert old.id not in s.jobs
    assert s.keys == {"k": new.id}


# ----------------------------------------------------------------------- cancel


def test_cancel_waiting_jobs_and_report_running_ones() -> None:
    s = State()
    running = submit(s)
    start(s)
    pending = submit(s, key="p")
    retrying = submit(s, priority=5)
    start(s)
    fail(s, retrying.id, T0)
    assert s.jobs[retrying.id].status == "retrying"
    events, stop = s.cancel([running.id, pending.id, retrying.id], T0 + 1)
    assert stop == [running.id]
    assert events == [
        Cancelled(pending.id, T0 + 1, "cancelled"),
        Cancelled(retrying.id, T0 + 1, "cancelled"),
    ]
    assert s.jobs[pending.id].status == "pending", "a decision must not change the state"
    apply_all(s, events)
    assert s.jobs[pending.id].status == "cancelled"
    assert s.jobs[pending.id].finished_at == T0 + 1
    assert s.keys == {}
    assert s.claim_next(T0 + 1000) is None
    assert s.next_wakeup() is None


@pytest.mark.parametrize("how", ["completed", "failed", "cancelled"])
def test_cancel_of_a_finished_job_is_refused(how: str) -> None:
    s = State()
    job = submit(s, max_retries=0)
    other = submit(s, delay=100.0)
    if how == "cancelled":
        apply_all(s, s.cancel([job.id], T0)[0])
    else:
        start(s)
        fail(s, job.id, T0, code=0 if how == "completed" else 1)
    assert s.jobs[job.id].status == how
    with refused("refused"):
        s.cancel([other.id, job.id], T0)
    assert s.jobs[other.id].status == "pending"


def test_cancel_of_an_unknown_id_is_not_found() -> None:
    s = State()
    job = submit(s)
    with refused("not_found"):
        s.cancel([job.id, 99], T0)
    with refused("not_found"):
        s.cancel([99], T0)
    assert s.jobs[job.id].status == "pending"


# ------------------------------------------------------------------------ retry


def _finished_jobs(s: State) -> dict[str, Job]:
    """One job in each status, with a key each (keys are then all free or live)."""
    out: dict[str, Job] = {}
    out["completed"] = submit(s, key="c")
    start(s)
    fail(s, out["completed"].id, T0, code=0)
    out["failed"] = submit(s, key="f", max_retries=0)
    start(s)
    fail(s, out["failed"].id, T0, code=3)
    out["cancelled"] = submit(s, key="x")
    apply_all(s, s.cancel([out["cancelled"].id], T0)[0])
    out["retrying"] = submit(s, key="r", max_retries=5)
    start(s)
    fail(s, out["retrying"].id, T0)
    out["running"] = submit(s, key="u")
    start(s)
    out["pending"] = submit(s, key="p", delay=1000.0)
    for status, job in out.items():
        assert s.jobs[job.id].status == status
    return out


def test_retry_puts_failed_and_cancelled_back_with_a_fresh_budget() -> None:
    s = State()
    jobs = _finished_jobs(s)
    ids = [jobs["failed"].id, jobs["cancelled"].id]
    events = s.retry(ids, T0 + 5)
    assert events == [Retried(ids, T0 + 5)]
    apply_all(s, events)
    for i in ids:
        job = s.jobs[i]
        assert job.status == "pending"
        assert job.attempts == 0
        assert (job.exit_code, job.error, job.finished_at, job.pid) == (None, None, None, None)
        assert job.run_at == T0 + 5
    assert s.keys["f"] == jobs["failed"].id
    assert s.keys["x"] == jobs["cancelled"].id
    # the retrying job's backoff (about 1.4 s) is over too, and a due retry goes first
    assert claim_all(s, T0 + 5) == [jobs["retrying"].id, *ids]


def test_retry_names_each_job_once() -> None:
    s = State()
    jobs = _finished_jobs(s)
    i = jobs["failed"].id
    assert s.retry([i, i, i], T0) == [Retried([i], T0)]


@pytest.mark.parametrize("status", ["completed", "retrying", "running", "pending"])
def test_retry_of_other_statuses_is_refused(status: str) -> None:
    s = State()
    jobs = _finished_jobs(s)
    with refused("refused"):
        s.retry([jobs["failed"].id, jobs[status].id], T0)
    assert s.jobs[jobs["failed"].id].status == "failed"


def test_retry_of_unknown_id_is_not_found_and_empty_retry_is_no_event() -> None:
    s = State()
    with refused("not_found"):
        s.retry([5], T0)
    assert s.retry([], T0) == []


def test_retry_is_refused_while_the_key_is_live_in_another_job() -> None:
    s = State()
    old = submit(s, key="k")
    apply_all(s, s.cancel([old.id], T0)[0])
    new = submit(s, key="k")
    with refused("refused"):
        s.retry([old.id], T0)
    assert s.retry_failed(None, T0) == []
    apply_all(s, s.cancel([new.id], T0)[0])
    assert s.retry([old.id], T0) == [Retried([old.id], T0)]


def test_retry_of_two_jobs_with_one_free_key_leaves_at_most_one_live() -> None:
    """Once a bug: both were revived, two live jobs with one key."""
    s = State()
    a = submit(s, key="k")
    apply_all(s, s.cancel([a.id], T0)[0])
    b = submit(s, key="k")
    apply_all(s, s.cancel([b.id], T0)[0])
    with refused("refused"):
        s.retry([a.id, b.id], T0)
    assert all(len(ids) <= 1 for ids in live_keys(s).values()), live_keys(s)


def test_retry_failed_revives_only_the_newest_job_of_a_key() -> None:
    """Once a bug: every failed job of a free key was revived."""
    s = State()
    ids = []
    for _ in range(3):
        job = submit(s, key="k", max_retries=0)
        start(s)
        fail(s, job.id, T0)
        ids.append(job.id)
    plain = submit(s, max_retries=0)
    start(s)
    fail(s, plain.id, T0)
    events = s.retry_failed(None, T0)
    assert events == [Retried([ids[-1], plain.id], T0)]
    apply_all(s, events)
    assert live_keys(s) == {"k": [ids[-1]]}
    assert s.keys == {"k": ids[-1]}
    _, results = s.submit([spec(key="k")], T0)
    assert results[0].deduplicated and results[0].job.id == ids[-1]


def test_retry_failed_takes_failed_jobs_only_by_queue_and_skips_live_keys() -> None:
    s = State()
    jobs = _finished_jobs(s)
    other_q = submit(s, queue="other", max_retries=0)
    start(s)
    fail(s, other_q.id, T0)
    keyed = submit(s, key="dup", max_retries=0)
    start(s)
    fail(s, keyed.id, T0)
    submit(s, key="dup", delay=1000.0)  # the key is live again
    assert s.retry_failed(None, T0 + 1) == [Retried([jobs["failed"].id, other_q.id], T0 + 1)]
    assert s.retry_failed("other", T0 + 1) == [Retried([other_q.id], T0 + 1)]
    assert s.retry_failed("nope", T0 + 1) == []


# ------------------------------------------------------------------------ clear


def test_clear_forgets_finished_jobs_only() -> None:
    s = State()
    jobs = _finished_jobs(s)
    events = s.clear(None, None)
    finished = sorted(jobs[k].id for k in FINISHED)
    assert events == [Cleared(finished)]
    assert len(s.jobs) == 6, "a decision must not change the state"
    apply_all(s, events)
    assert sorted(j.status for j in s.jobs.values()) == ["pending", "retrying", "running"]
    assert s.summary()["counts"] == recount(s)
    assert s.summary()["total"] == 3
    assert s.clear(None, None) == []


def test_clear_by_status_and_queue() -> None:
    s = State()
    jobs = _finished_jobs(s)
    q = submit(s, queue="q")
    apply_all(s, s.cancel([q.id], T0)[0])
    assert s.clear("failed", None) == [Cleared([jobs["failed"].id])]
    assert s.clear("cancelled", None) == [Cleared([jobs["cancelled"].id, q.id])]
    assert s.clear("cancelled", "q") == [Cleared([q.id])]
    assert s.clear(None, "q") == [Cleared([q.id])]
    assert s.clear("completed", "q") == []


@pytest.mark.parametrize("status", ["running", "pending", "retrying", "bogus"])
def test_clear_of_unfinished_status_is_a_usage_error(status: str) -> None:
    s = State()
    _finished_jobs(s)
    with refused("usage"):
        s.clear(status, None)


# ------------------------------------------------------------------ pause/resume


def test_pause_and_resume_one_queue() -> None:
    s = State()
    a = submit(s, queue="a", priority=5)
    b = submit(s, queue="b")
    s.apply(Paused("a"))
    assert s.summary()["paused"] == ["a"]
    assert claim_all(s, T0) == [b.id]
    assert s.claim_next(T0 + 100) is None
    s.apply(Resumed("a"))
    assert s.summary()["paused"] == []
    assert claim_all(s, T0) == [a.id]


def test_pause_and_resume_all() -> None:
    s = State()
    a = submit(s, queue="a")
    b = submit(s, queue="b", delay=3.0)
    s.apply(Paused(None))
    assert s.summary()["paused_all"] is True
    assert s.claim_next(T0 + 10) is None
    c = submit(s, queue="c", priority=-1)
    assert s.claim_next(T0 + 10) is None
    s.apply(Resumed(None))
    assert s.summary()["paused_all"] is False
    assert claim_all(s, T0 + 10) == [a.id, b.id, c.id]


def test_resume_all_also_resumes_paused_queues_and_pause_all_outlives_queue_resume() -> None:
    s = State()
    a = submit(s, queue="a")
    s.apply(Paused("a"))
    s.apply(Paused(None))
    s.apply(Resumed("a"))
    assert s.claim_next(T0) is None
    s.apply(Paused("a"))
    s.apply(Resumed(None))
    assert claim_all(s, T0) == [a.id]


def test_job_submitted_to_paused_queue_runs_after_resume_in_order() -> None:
    s = State()
    s.apply(Paused("a"))
    first = submit(s, queue="a")
    second = submit(s, queue="a", priority=1)
    assert s.claim_next(T0) is None
    s.apply(Resumed("a"))
    assert claim_all(s, T0) == [second.id, first.id]


# ------------------------------------------------------------ concurrency limits


def test_a_queue_at_its_limit_is_passed_over() -> None:
    s = State()
    a = submit(s, queue="a", priority=5)
    b = submit(s, queue="b")
    assert claim_all(s, T0, busy={"a": 2}, limits={"a": 2}) == [b.id]
    assert claim_all(s, T0, busy={"a": 1}, limits={"a": 2}) == [a.id]


def test_limit_set_at_run_time_overrides_the_configured_one_until_unset() -> None:
    s = State()
    a = submit(s, queue="a")
    s.apply(QueueSet("a", 0))
    assert s.claim_next(T0, None, {}, {"a": 5}) is None
    s.apply(QueueSet("a", 3))
    assert s.claim_next(T0, None, {"a": 3}, {"a": 5}) is None
    s.apply(QueueSet("a", None))
    assert s.limits == {}
    assert claim_all(s, T0, {"a": 3}, {"a": 5}) == [a.id]
    s.apply(QueueSet("a", 1))
    assert restore(s).limits == {"a": 1}


# ---------------------------------------------------------------------- outcome


def test_exit_zero_completes() -> None:
    s = State()
    job = submit(s, key="k")
    _attempt(s, job.id, T0)
    event = s.outcome(job.id, 0, None, T0 + 2, random.Random(0))
    assert event == Completed(job.id, T0 + 2, 0)
    assert s.jobs[job.id].status == "running"
    s.apply(event)
    done = s.jobs[job.id]
    assert (done.status, done.exit_code, done.finished_at, done.pid) == (
        "completed",
        0,
        T0 + 2,
        None,
    )
    assert s.keys == {}


def test_exit_zero_with_an_error_is_a_failure() -> None:
    s = State()
    job = submit(s)
    _attempt(s, job.id, T0)
    event = s.outcome(job.id, 0, "timed out", T0, random.Random(0))
    assert isinstance(event, Failed)
    assert event.error == "timed out"
    assert event.retry_at is not None


def test_exit_100_fails_for_good() -> None:
    s = State()
    job = submit(s, max_retries=5)
    _attempt(s, job.id, T0)
    event = s.outcome(job.id, NO_RETRY_EXIT, None, T0, random.Random(0))
    assert isinstance(event, Failed)
    assert event.retry_at is None
    assert event.exit_code == NO_RETRY_EXIT


@pytest.mark.parametrize("seed", range(8))
def test_failures_back_off_exponentially_with_jitter_then_fail_for_good(seed: int) -> None:
    s = State()
    retries = 9
    job = submit(s, max_retries=retries)
    rng = random.Random(seed)
    now = T0
    for attempt in range(1, retries + 2):
        _attempt(s, job.id, now)
        assert s.jobs[job.id].attempts == attempt
        event = s.outcome(job.id, 2, None, now, rng)
        assert isinstance(event, Failed)
        assert (event.id, event.at, event.exit_code) == (job.id, now, 2)
        assert event.error == "exited with status 2"
        if attempt <= retries:
            base = min(BACKOFF_BASE * 2 ** (attempt - 1), BACKOFF_MAX)
            assert event.retry_at is not None
            assert now + base <= event.retry_at <= now + base * (1 + BACKOFF_JITTER)
            assert event.retry_at <= now + 60.0 * 1.5
        else:
            assert event.retry_at is None
        s.apply(event)
        if event.retry_at is not None:
            assert s.jobs[job.id].status == "retrying"
            assert s.jobs[job.id].run_at == event.retry_at
            assert s.claim_next(event.retry_at - 1e-6) is None
            assert s.next_wakeup() == event.retry_at
            now = event.retry_at
    assert s.jobs[job.id].status == "failed"
    assert s.jobs[job.id].attempts == retries + 1
    assert s.claim_next(now + 1e6) is None


def test_backoff_reaches_the_cap() -> None:
    s = State()
    job = submit(s, max_retries=20)
    now = T0
    seen: list[float] = []
    for _ in range(12):
        _attempt(s, job.id, now)
        event = s.outcome(job.id, 1, None, now, random.Random(len(seen)))
        assert isinstance(event, Failed) and event.retry_at is not None
        seen.append(event.retry_at - now)
        s.apply(event)
        now = event.retry_at
    assert all(60.0 <= d <= 90.0 for d in seen[7:]), seen
    assert 1.0 <= seen[0] <= 1.5 and 2.0 <= seen[1] <= 3.0 and 4.0 <= seen[2] <= 6.0


def test_jitter_is_drawn_from_the_rng() -> None:
    s = State()
    job = submit(s)
    _attempt(s, job.id, T0)
    draws = {s.outcome(job.id, 1, None, T0, random.Random(seed)).retry_at for seed in range(20)}
    assert len(draws) > 10


def test_retries_and_backoff_come_from_the_job_else_its_queue_else_the_defaults() -> None:
    s = State()
    defaults = {"q": QueueDefaults(max_retries=1, backoff=(2.0, 3.0, 0.0))}
    events, results = s.submit(
        [spec(queue="q"), spec(queue="q", max_retries=4, backoff=(5.0, 5.0, 0.0)), spec()],
        T0,
        defaults,
    )
    apply_all(s, events)
    q_job, own, plain = (r.job for r in results)
    assert (q_job.max_retries, q_job.backoff) == (1, (2.0, 3.0, 0.0))
    assert (own.max_retries, own.backoff) == (4, (5.0, 5.0, 0.0))
    assert (plain.max_retries, plain.backoff) == (DEFAULT_RETRIES, None)
    for job, delay in ((q_job, 2.0), (own, 5.0)):
        _attempt(s, job.id, T0)
        event = s.outcome(job.id, 1, None, T0, random.Random(3))
        assert isinstance(event, Failed) and event.retry_at == T0 + delay
        s.apply(event)
    _attempt(s, plain.id, T0)
    # second failure of the queue's job: its one retry is spent
    _attempt(s, q_job.id, T0 + 2.0)
    event = s.outcome(q_job.id, 1, None, T0 + 2.0, random.Random(3))
    assert isinstance(event, Failed) and event.retry_at is None


def test_not_retryable_failure_is_final() -> None:
    s = State()
    job = submit(s, key="k", max_retries=5)
    _attempt(s, job.id, T0)
    event = s.outcome(job.id, None, "cannot start 'x'", T0 + 1, random.Random(0), False)
    assert event == Failed(job.id, T0 + 1, None, "cannot start 'x'", None)
    s.apply(event)
    assert s.jobs[job.id].status == "failed"
    assert s.jobs[job.id].finished_at == T0 + 1
    assert s.keys == {}


def test_zero_retries_fail_at_once() -> None:
    s = State()
    job = submit(s, max_retries=0)
    _attempt(s, job.id, T0)
    event = s.outcome(job.id, 1, None, T0, random.Random(0))
    assert isinstance(event, Failed) and event.retry_at is None


def test_requeued_gives_the_attempt_back() -> None:
    s = State()
    job = submit(s, max_retries=0, key="k")
    _attempt(s, job.id, T0)
    assert s.jobs[job.id].attempts == 1
    s.apply(Requeued(job.id))
    j = s.jobs[job.id]
    assert (j.status, j.attempts, j.pid) == ("pending", 0, None)
    assert s.keys == {"k": job.id}
    assert s.summary()["counts"] == recount(s)
    _attempt(s, job.id, T0 + 1)
    assert s.jobs[job.id].attempts == 1
    # with the attempt given back, max_retries=0 still means this run is the last
    event = s.outcome(job.id, 1, None, T0 + 2, random.Random(0))
    assert isinstance(event, Failed) and event.retry_at is None


def test_started_records_the_attempt_and_clears_the_last_outcome() -> None:
    s = State()
    job = submit(s)
    _attempt(s, job.id, T0)
    s.apply(ProgressSaved(job.id, JobProgress(T0, percent=50.0)))
    fail(s, job.id, T0)
    assert s.jobs[job.id].exit_code == 1
    retry_at = s.jobs[job.id].run_at
    claimed = s.claim_next(retry_at)
    assert claimed is not None
    s.apply(Started(job.id, retry_at, 77, 5.0))
    j = s.jobs[job.id]
    assert (j.status, j.attempts, j.started_at, j.pid, j.pid_started) == (
        "running",
        2,
        retry_at,
        77,
        5.0,
    )
    assert (j.exit_code, j.error, j.progress) == (None, None, None)


# ------------------------------------------------------------------ --after


def test_after_waits_for_its_dependencies_to_complete() -> None:
    s = State()
    d1 = submit(s)
    d2 = submit(s, delay=5.0)
    dep = submit(s, after=[d2.id, d1.id, d1.id], priority=9)
    assert s.jobs[dep.id].after == (d1.id, d2.id)
    assert s.waits_for(s.jobs[dep.id]) == [d1.id, d2.id]
    _attempt(s, d1.id, T0)
    s.apply(s.outcome(d1.id, 0, None, T0, random.Random(0)))
    assert s.claim_next(T0 + 4) is None
    _attempt(s, d2.id, T0 + 5)
    assert s.claim_next(T0 + 5) is None
    s.apply(s.outcome(d2.id, 0, None, T0 + 6, random.Random(0)))
    assert s.waits_for(s.jobs[dep.id]) == []
    assert claim_all(s, T0 + 6) == [dep.id]


def test_after_a_completed_or_forgotten_job_runs_at_once() -> None:
    s = State()
    done = submit(s)
    _attempt(s, done.id, T0)
    s.apply(Completed(done.id, T0, 0))
    dep = submit(s, after=[done.id])
    assert claim_all(s, T0) == [dep.id]
    apply_all(s, s.clear(None, None))
    with refused("not_found"):
        s.submit([spec(after=[done.id])], T0)


def test_after_a_failed_or_cancelled_job_is_refused() -> None:
    s = State()
    d = submit(s)
    apply_all(s, s.cancel([d.id], T0)[0])
    with refused("refused"):
        s.submit([spec(), spec(after=[d.id])], T0)
    with refused("not_found"):
        s.submit([spec(after=[77])], T0)


def test_failure_of_a_dependency_cancels_what_waits_on_it_transitively() -> None:
    s = State()
    d = submit(s, max_retries=0)
    j1 = submit(s, after=[d.id], key="j1")
    j2 = submit(s, after=[j1.id])
    other = submit(s)
    _attempt(s, d.id, T0)
    s.apply(s.outcome(d.id, 1, None, T0 + 1, random.Random(0)))
    for j in (j1, j2):
        job = s.jobs[j.id]
        assert job.status == "cancelled"
        assert job.finished_at == T0 + 1
        assert job.error is not None and "runs after" in job.error
    assert s.keys == {}
    assert s.summary()["counts"] == recount(s)
    assert claim_all(s, T0 + 1) == [other.id]
    # a dependent cannot be retried before its dependency
    with refused("refused"):
        s.retry([j1.id], T0 + 2)
    assert s.retry_failed(None, T0 + 2) == [Retried([d.id], T0 + 2)]
    apply_all(s, s.retry([d.id], T0 + 2))
    with refused("refused"):  # j2 runs after j1, cancelled until this retry is applied
        s.retry([j1.id, j2.id], T0 + 2)
    apply_all(s, s.retry([j1.id], T0 + 2))
    apply_all(s, s.retry([j2.id], T0 + 2))
    assert s.waits_for(s.jobs[j2.id]) == [j1.id]
    assert claim_all(s, T0 + 2) == [d.id]


# ------------------------------------------------------------ snapshot round trip


def test_snapshot_keeps_the_claim_order_of_a_retried_job() -> None:
    """Once a divergence: the restored state ranked one priority by id."""
    for restore_now in (None, T0 + 10):
        s = State()
        first = submit(s)
        apply_all(s, s.cancel([first.id], T0)[0])
        second = submit(s)
        apply_all(s, s.retry([first.id], T0 + 1))
        restored = restore(s, restore_now)
        assert claim_all(s, T0 + 10) == [second.id, first.id]
        assert claim_all(restored, T0 + 10) == [second.id, first.id]


@pytest.mark.parametrize("how", ["completed", "failed", "cancelled"])
def test_keys_of_finished_jobs_are_not_live_after_a_snapshot(how: str) -> None:
    """A restored finished job does not hold its key: the same key submitted again makes a
    new job (a restore that took every key as live would hand back the finished one)."""
    s = State()
    old = submit(s, key="k", max_retries=0)
    live = submit(s, key="other")
    if how == "cancelled":
        apply_all(s, s.cancel([old.id], T0)[0])
    else:
        _attempt(s, old.id, T0)
        s.apply(s.outcome(old.id, 0 if how == "completed" else 1, None, T0, random.Random(1)))
    assert s.jobs[old.id].status == how
    for restored in (restore(s), restore(s, T0 + 10)):
        assert restored.keys == {"other": live.id}
        events, results = restored.submit([spec(key="k"), spec(key="other")], T0 + 11)
        assert [r.deduplicated for r in results] == [False, True]
        assert results[0].job.id not in (old.id, live.id) and results[1].job.id == live.id
        assert len(events) == 1


def _release_orders(s: State, d: Job, now: float) -> list[list[int]]:
    """Complete `d` (running) in `s` and in a restored copy; the claim order after each."""
    restored = restore(s)
    orders = []
    for state in (s, restored):
        state.apply(Completed(d.id, now, 0))
        orders.append(claim_all(state, now))
    return orders


def test_snapshot_keeps_the_release_order_of_retried_dependents() -> None:
    """Once a divergence: the restored state re-blocked --after jobs in id order."""
    s = State()
    d = submit(s, max_retries=0)
    j1 = submit(s, after=[d.id])
    j2 = submit(s, after=[d.id])
    _attempt(s, d.id, T0)
    fail(s, d.id, T0)
    apply_all(s, s.retry([d.id], T0 + 1))
    apply_all(s, s.retry([j2.id], T0 + 1))  # j2 is queued again before j1
    apply_all(s, s.retry([j1.id], T0 + 1))
    _attempt(s, d.id, T0 + 2)
    assert _release_orders(s, d, T0 + 3) == [[j2.id, j1.id], [j2.id, j1.id]]


def test_release_order_of_a_dependent_retried_while_its_dependency_runs() -> None:
    s = State()
    d = submit(s)
    _attempt(s, d.id, T0)
    j1 = submit(s, after=[d.id])
    apply_all(s, s.cancel([j1.id], T0)[0])  # d still runs: nothing cascades
    j2 = submit(s, after=[d.id])
    apply_all(s, s.retry([j1.id], T0 + 1))  # j1 is blocked again, after j2
    live, restored = _release_orders(s, d, T0 + 3)
    assert restored == [j2.id, j1.id]
    assert live == restored


def test_snapshot_of_a_paused_state_stays_paused() -> None:
    s = State()
    submit(s, queue="a")
    b = submit(s, queue="b")
    s.apply(Paused("a"))
    restored = restore(s, T0)
    assert restored.summary()["paused"] == ["a"]
    assert claim_all(restored, T0) == [b.id]
    s.apply(Paused(None))
    restored = restore(s)
    assert restored.paused_all is True
    assert restored.claim_next(T0) is None


def test_snapshot_restored_with_now_does_not_start_jobs_early() -> None:
    s = State()
    soon = submit(s, delay=0.5)
    due = submit(s)
    for restore_now in (None, T0):
        restored = restore(s, restore_now)
        assert claim_all(restored, T0) == [due.id]
        assert restored.next_wakeup() == T0 + 0.5
        assert claim_all(restored, T0 + 0.5) == [soon.id]


def test_snapshot_restores_delayed_retrying_and_blocked_jobs() -> None:
    s = State()
    delayed = submit(s, delay=50.0)
    retrying = submit(s, priority=1)
    blocked = submit(s, after=[retrying.id], priority=2)
    _attempt(s, retrying.id, T0)
    event = fail(s, retrying.id, T0)
    assert isinstance(event, Failed) and event.retry_at is not None
    for restore_now in (None, T0, event.retry_at):
        restored = restore(s, restore_now)
        same_state(restored, s)
        assert restored.next_wakeup() in (event.retry_at, T0 + 50.0)
        assert claim_all(restored, event.retry_at) == [retrying.id]
        assert restored.next_wakeup() == T0 + 50.0
        restored.apply(Started(retrying.id, T0 + 3, None, None))
        restored.apply(Completed(retrying.id, T0 + 4, 0))
        assert claim_all(restored, T0 + 50.0) == [blocked.id, delayed.id]


QUEUES = ("a", "b", "c")
KEYS = (None, "k1", "k2")
DELAYS = (None, 0.0, 1.0, 5.0, 30.0)
#: configured limits and queue defaults, as the daemon passes them in
CONFIG_LIMITS = {"c": 1}
DEFAULTS = {"b": QueueDefaults(max_retries=1, backoff=(0.5, 4.0, 0.0))}
OWN_BACKOFF = (None, None, (0.25, 1.0, 1.0))

_submit_op = st.tuples(
    st.just("submit"),
    st.sampled_from(QUEUES),
    st.integers(-2, 2),
    st.sampled_from(KEYS),
    st.sampled_from(DELAYS),
    st.sampled_from([None, 0, 1, 2]),
    st.lists(st.integers(0, 50), max_size=2),
)
_ops = st.one_of(
    _submit_op,
    st.tuples(st.just("start")),
    st.tuples(
        st.just("finish"), st.integers(0, 50), st.sampled_from([0, 1, NO_RETRY_EXIT]), st.booleans()
    ),
    st.tuples(st.just("requeue"), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("retry"), st.integers(0, 50)),
    st.tuples(st.just("retry_failed")),
    st.tuples(st.just("clear"), st.sampled_from([None, "completed", "failed", "cancelled"])),
    st.tuples(st.just("pause"), st.sampled_from((None, *QUEUES))),
    st.tuples(st.just("resume"), st.sampled_from((None, *QUEUES))),
    st.tuples(st.just("limit"), st.sampled_from(QUEUES), st.sampled_from([None, 0, 1, 2])),
    st.tuples(st.just("progress"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 1.0, 3.0, 10.0, 100.0])),
)


class Driver:
    """Takes decisions on the first state and applies the events to every state; each
    start claims on every state and checks they all hand out the same job."""

    def __init__(self, seed: int) -> None:
        self.states = [State()]
        self.now = T0
        self.rng = random.Random(seed)

    @property
    def live(self) -> State:
        return self.states[0]

    def pick(self, index: int, *statuses: str) -> int | None:
        jobs = self.live.jobs.values()
        ids = sorted(j.id for j in jobs if not statuses or j.status in statuses)
        return ids[index % len(ids)] if ids else None

    def run(self, op: tuple[Any, ...]) -> None:
        s, now = self.live, self.now
        kind = op[0]
        events: list[AnyEvent] = []
        try:
            if kind == "submit":
                _, queue, prio, key, delay, retries, after = op
                known = sorted(s.jobs)
                deps = [known[a % len(known)] for a in after] if known else []
                job_spec = spec(
                    queue=queue,
                    priority=prio,
                    key=key,
                    delay=delay,
                    max_retries=retries,
                    after=deps,
                    backoff=OWN_BACKOFF[prio % 3],
                )
                events, _ = s.submit([job_spec], now, DEFAULTS)
            elif kind == "start":
                busy = Counter(j.queue for j in s.by_status("running"))
                claimed = [x.claim_next(now, None, busy, CONFIG_LIMITS) for x in self.states]
                ids = [None if j is None else j.id for j in claimed]
                assert len(set(ids)) == 1, f"the states claim differently: {ids}"
                if ids[0] is not None:
                    events = [Started(ids[0], now, 100 + ids[0], now)]
            elif kind == "finish" and (i := self.pick(op[1], "running")) is not None:
                events = [s.outcome(i, op[2], None, now, self.rng, op[3])]
            elif kind == "requeue" and (i := self.pick(op[1], "running")) is not None:
                events = [Requeued(i)]
            elif kind == "cancel" and (i := self.pick(op[1])) is not None:
                events, running = s.cancel([i], now)
                events += [Cancelled(r, now, "cancelled") for r in running]
            elif kind == "retry" and (i := self.pick(op[1])) is not None:
                events = s.retry([i], now)
            elif kind == "retry_failed":
                events = s.retry_failed(None, now)
            elif kind == "clear":
                events = s.clear(op[1], None)
            elif kind == "pause":
                events = [Paused(op[1])]
            elif kind == "resume":
                events = [Resumed(op[1])]
            elif kind == "limit":
                events = [QueueSet(op[1], op[2])]
            elif kind == "progress" and (i := self.pick(op[1], "running")) is not None:
                events = [ProgressSaved(i, JobProgress(now, percent=float(op[1])))]
            elif kind == "tick":
                self.now += op[1]
        except Refused:
            return
        records = [msgspec.msgpack.encode(e) for e in events]
        apply_all(self.live, events)
        for state in self.states[1:]:  # copies, as from the journal: no Job is shared
            apply_all(state, [_event_decoder.decode(r) for r in records])


@settings(max_examples=150, deadline=None)
@given(
    before=st.lists(_ops, max_size=40),
    after=st.lists(_ops, max_size=20),
    seed=st.integers(0, 2**16),
    with_now=st.booleans(),
)
def test_snapshot_round_trip(
    before: list[tuple[Any, ...]], after: list[tuple[Any, ...]], seed: int, with_now: bool
) -> None:
    """A restored state equals the live one, and stays equal under the same future."""
    d = Driver(seed)
    for op in before:
        d.run(op)
    s = d.live
    restored = restore(s, d.now if with_now else None, lsn=len(before))
    same_state(restored, s)
    assert restored.summary()["counts"] == recount(s)
    assert restored.paused == s.paused and restored.paused_all == s.paused_all

    d.states.append(restored)
    for op in after:
        d.run(op)
    same_state(restored, s)
    for at in (d.now, d.now + 1e6):
        live, back = claim_all(s, at), claim_all(restored, at)
        note(f"at {at}: live {live}, restored {back}")
        assert back == live


@pytest.mark.parametrize("delayed", [False, True])
def test_a_batch_added_in_bulk_is_the_jobs_added_one_by_one(delayed: bool) -> None:
    # 40 jobs of one queue, all due at once: State._add_in_bulk; with a delayed one among
    # them, the loop of `_add`. Either way the same as 40 Submitted events.
    specs = [JobSpec(argv=["true"], priority=i % 3, cwd="/srv") for i in range(40)]
    if delayed:
        specs[7] = JobSpec(argv=["true"], delay=5.0)
    bulk, single = State(), State()
    for s in (bulk, single):
        submit(s, priority=1)  # a job queued before the batch
    events, _ = bulk.submit(specs, T0)
    (batch,) = events
    assert isinstance(batch, SubmittedBatch) and len(batch.jobs) >= BULK
    bulk.apply(batch)
    for job in msgspec.msgpack.decode(msgspec.msgpack.encode(batch.jobs), type=list[Job]):
        single.apply(Submitted(job))
    same_state(bulk, single)
    assert bulk._queued == single._queued
    assert bulk.jobs[10].cwd is bulk.jobs[30].cwd
    assert claim_all(bulk, T0 + 10) == claim_all(single, T0 + 10)
