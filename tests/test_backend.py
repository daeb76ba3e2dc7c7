"""The local backend and the dispatcher in process: a real State, a real journal with
fdatasync in a temp dir, real anyio, real subprocesses for the dispatcher; no daemon
process and no socket, so each rule of backend.py is checked where it is kept.

Every test ends by replaying the journal and comparing it with the state in memory: what
the backend applied is exactly what it journaled.

The rules both backends keep run against each (`store`: the local one, and the PostgreSQL
one on a database of tests/pgfixture.py), so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from phxqd import protocol
from phxqd.backend import SHUTDOWN, Backend, Begun, Ending
from phxqd.core import Core
from phxqd.local.backend import LocalBackend
from phxqd.local.journal import Journal
from phxqd.local.recovery import recover
from phxqd.local.state import State
from phxqd.model import Job, JobSpec, Progress, QueueConfig
from phxqd.postgres.backend import PostgresBackend
from phxqd.protocol import Refused
from phxqd.run import output
from phxqd.settings import Settings
from tests.conftest import settings_in
from tests.pgfixture import running_backend

#: seconds any one in-process test may take before it counts as hung
HANG = 30.0


class Rig:
    """One backend over its own state and journal, running."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = State()
        self.journal = Journal(settings.journal_dir, 1, "always")
        self.backend = LocalBackend(self.state, self.journal, settings, random.Random(7))

    def replayed(self) -> State:
        return recover(self.settings.journal_dir, cut_torn_tail=False, now=time.time()).state

    def assert_journal_matches_memory(self) -> None:
        assert_same(self.replayed(), self.state, self.journal.last_lsn)


def assert_same(replayed: State, live: State, lsn: int) -> None:
    """Every job and queue setting the same. (Not the order of the waiting: a job claimed
    and not yet started is off the ready heaps in memory, waiting in the journal.)"""
    a, b = replayed.snapshot(lsn), live.snapshot(lsn)
    a.order = b.order = []
    a.order_is_ids = b.order_is_ids = False
    # (a replay keeps batches' jobs in their stored bytes: compared as Jobs)
    a.jobs, b.jobs = list(replayed.jobs.values()), list(live.jobs.values())
    assert msgspec.msgpack.encode(a) == msgspec.msgpack.encode(b)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Rig]:
    rig = Rig(settings)
    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:
            await tg.start(rig.backend.run)
            yield rig
            await rig.backend.close()
            tg.cancel_scope.cancel()
    rig.assert_journal_matches_memory()


class Store:
    """Either backend, running, for the rules both keep."""

    def __init__(self, kind: str, tmp_path: Path, uri: str | None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.uri = uri
        self.rig: Rig | None = None
        self.backend: Backend

    @contextlib.asynccontextmanager
    async def running(self, settings: Settings) -> AsyncIterator[Backend]:
        if self.uri is None:
            async with running(settings) as rig:
                self.rig, self.backend = rig, rig.backend
                yield rig.backend
            return
        async with running_backend(self.uri, settings, HANG) as b:
            self.backend = b
            yield b

    async def settled(self) -> None:
        """What was reported so far is recorded (the PostgreSQL backend writes it in the
        background; the local one applies it at once)."""
        if isinstance(self.backend, PostgresBackend):
            await self.backend.settle()

    def durable_ids(self) -> set[int]:
        """The jobs a fresh start would find: the journal replayed, or PostgreSQL's rows."""
        if self.rig is not None:
            return set(self.rig.replayed().jobs)
        import psycopg

        assert self.uri is not None
        with psycopg.connect(self.uri) as conn:
            return {r[0] for r in conn.execute("SELECT id FROM phxq_jobs").fetchall()}


@pytest.fixture(params=["local", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    uri = request.getfixturevalue("pg_uri") if request.param == "postgresql" else None
    return Store(request.param, tmp_path, uri)


def taken(b: Backend) -> Job:
    """The next job `b` hands out, which there must be."""
    job = b.claim(time.time())
    assert job is not None
    return job


async def claimed_soon(b: Backend) -> Job:
    """The next job `b` hands out, waiting for one (a retry's backoff, on PostgreSQL,
    runs in real time: the local backend hands it out when `claim` is told a later now)."""
    with anyio.fail_after(HANG):
        while True:
            await b.claimable()
            job = b.claim(time.time() + 3600)
            if job is not None:
                return job
            await anyio.sleep(0.05)


def spec(*argv: str, **fields: object) -> JobSpec:
    return JobSpec(argv=list(argv or ("true",)), **fields)  # type: ignore[arg-type]


def test_submit_is_durable_dedups_live_keys_and_replays(store: Store) -> None:
    async def main() -> None:
        async with store.running(settings_in(store.tmp_path)) as b:
            first = await b.submit([spec(key="k"), spec("echo", "x")], time.time())
            again = await b.submit([spec(key="k")], time.time())
            assert [r.deduplicated for r in first] == [False, False]
            assert again[0].deduplicated and again[0].job.id == first[0].job.id
            assert again[0].job == first[0].job, "the live job of the key, as submitted"
            # acknowledged means durable: the journal (or PostgreSQL) already has both jobs
            assert store.durable_ids() == {first[0].job.id, first[1].job.id}
            assert [await b.get(r.job.id) for r in first] == [r.job for r in first], (
                "the job a submit answers is the job the backend keeps"
            )

    anyio.run(main)


def test_claims_wait_for_durability_and_keep_priority_limits_and_pauses(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, queues={"q": QueueConfig(concurrency=1)})

    async def main() -> None:
        async with running(settings) as rig:
            b = rig.backend
            now = time.time()
            low, high, other = (
                r.job
                for r in await b.submit([spec(queue="q"), spec(queue="q", priority=5), spec()], now)
            )
            assert b.claim(now) is None, "claimed before claimable() saw the submit durable"
            await b.claimable()
            assert b.claim(now) is high
            assert (await b.summary()).busy.get("q", 0) == 1
            assert b.claim(now) is other, "queue q is at its limit: the next is another queue's"
            assert b.claim(now) is None
            b.report([Begun(high, now, None, None)], [])
            b.report([], [Ending(high, True, exit_code=0)])
            assert (await b.summary()).busy.get("q", 0) == 0
            await b.pause("q")
            assert b.claim(now) is None, "q is paused"
            await b.resume("q")
            assert b.claim(now) is low
            b.report([], [Ending(low, False), Ending(other, False)])  # both given back unstarted
            assert (await b.summary()).busy.get("q", 0) == 0
            again = [b.claim(now), b.claim(now)]
            assert sorted(j.id for j in again if j) == sorted([low.id, other.id]), "claimed again"
            b.report([], [Ending(low, False, stop_reason=SHUTDOWN), Ending(other, False)])
            assert (await b.wait([high.id], None))[0].status == "completed"

    anyio.run(main)


def test_a_given_back_job_goes_before_newer_and_higher_ones(store: Store) -> None:
    async def main() -> None:
        async with store.running(settings_in(store.tmp_path)) as b:
            [first] = [r.job for r in await b.submit([spec()], time.time())]
            await b.claimable()
            job = taken(b)
            assert job.id == first.id
            await b.submit([spec(priority=9)], time.time())
            await b.claimable()
            b.report([], [Ending(job, False)])
            again = taken(b)
            assert again.id == first.id
            b.report([], [Ending(again, False, stop_reason="cancelled")])
            await store.settled()
            assert (await b.get(first.id)).status == "cancelled"
            assert (await b.get(first.id)).attempts == 0

    anyio.run(main)


def test_failed_attempts_retry_by_policy_then_fail_and_waiters_are_told(store: Store) -> None:
    async def main() -> None:
        async with store.running(settings_in(store.tmp_path)) as b:
            [job] = [r.job for r in await b.submit([spec(max_retries=1)], time.time())]
            for attempt in (1, 2):
                claimed = await claimed_soon(b)
                assert claimed.id == job.id
                b.report([Begun(claimed, time.time(), 123, 1.0)], [])
                await store.settled()
                now = await b.get(job.id)
                assert now.attempts == attempt and now.pid == 123
                b.report([], [Ending(claimed, True, exit_code=3, error="exited with status 3")])
                await store.settled()
                expected = "retrying" if attempt == 1 else "failed"
                assert (await b.get(job.id)).status == expected
            [done] = await b.wait([job.id], HANG)
            assert done.status == "failed" and done.exit_code == 3
            assert b.ended(job.id).is_set() or store.kind == "postgresql"

    anyio.run(main)


def test_cancel_stops_nothing_itself_it_names_the_claimed_jobs(store: Store) -> None:
    async def main() -> None:
        async with store.running(settings_in(store.tmp_path)) as b:
            claimed, waiting = (r.job for r in await b.submit([spec(), spec()], time.time()))
            await b.claimable()
            job = taken(b)
            assert job.id == claimed.id
            to_stop = await b.cancel([claimed.id, waiting.id], time.time())
            assert to_stop == [claimed.id]
            assert (await b.get(waiting.id)).status == "cancelled"
            assert (await b.get(claimed.id)).status == "pending", (
                "the dispatcher stops it, not the backend"
            )
            b.report([], [Ending(job, False, stop_reason="cancelled")])
            assert [j.status for j in await b.wait([claimed.id], HANG)] == ["cancelled"]
            with pytest.raises(Refused) as refused:
                await b.cancel([waiting.id], time.time())
            assert refused.value.code == "refused"

    anyio.run(main)


def test_jobs_cancelled_by_a_cascade_are_told_to_listeners(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(settings_in(tmp_path)) as rig:
            b = rig.backend
            [first] = [r.job for r in await b.submit([spec(max_retries=0)], time.time())]
            [after] = [r.job for r in await b.submit([spec(after=[first.id])], time.time())]
            await b.claimable()
            with b.feed.listen() as listener:
                assert b.claim(time.time()) is first
                b.report([Begun(first, time.time(), None, None)], [])
                b.report([], [Ending(first, True, exit_code=1, error="exited with status 1")])
                events = [(e.event, e.id) for e in await listener.take()]
            assert ("failed", first.id) in events and ("cancelled", after.id) in events
            assert (await b.get(after.id)).status == "cancelled"

    anyio.run(main)


def test_progress_is_told_at_once_and_checkpointed_at_most_once_a_second(tmp_path: Path) -> None:
    def report(**fields: object) -> object:
        return lambda old: msgspec.structs.replace(old or Progress(time.time()), **fields)

    async def main() -> None:
        async with running(settings_in(tmp_path)) as rig:
            b = rig.backend
            [job] = [r.job for r in await b.submit([spec()], time.time())]
            await b.claimable()
            assert b.claim(time.time()) is job
            b.report([Begun(job, time.time(), None, None)], [])
            with b.feed.listen({job.id}) as listener:  # type: ignore[arg-type]
                assert b.progress(job.id, 1, report(percent=10.0))  # type: ignore[arg-type]
                assert b.progress(job.id, 1, report(step="two"))  # type: ignore[arg-type]
                told = [e.progress for e in await listener.take()]
            assert [(p.percent, p.step) for p in told if p] == [(10.0, None), (10.0, "two")]
            # the first report is a checkpoint at once; the second is held (under a second)
            assert (await b.get(job.id)).progress is not None
            assert (await b.get(job.id)).progress.step is None  # type: ignore[union-attr]
            await rig.journal.durable(rig.journal.last_lsn)
            assert rig.replayed().jobs[job.id].progress.percent == 10.0  # type: ignore[union-attr]
            assert not b.progress(job.id, 2, report(percent=99.0)), "another attempt's report"  # type: ignore[arg-type]
            # the held report is saved with the job's end, before it
            b.report([], [Ending(job, True, exit_code=0)])
            [done] = await b.wait([job.id], HANG)
            assert done.progress is not None and done.progress.step == "two"

    anyio.run(main)


def test_a_submit_the_disk_refuses_is_taken_back_and_writes_resume(small_fs: Path) -> None:
    """A full disk (a real ENOSPC from a small tmpfs): the submit is refused and its jobs
    are not in memory either; the other jobs stay; once there is room the backend saves
    everything in a snapshot and takes changes again."""

    async def main() -> None:
        async with running(settings_in(small_fs / "state")) as rig:
            b = rig.backend
            kept = [r.job.id for r in await b.submit([spec()], time.time())]
            ballast = small_fs / "ballast"
            with contextlib.suppress(OSError), open(ballast, "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 4096)
            # (a 1 MiB filesystem is far under the 64 MiB preallocation keeps free: the
            # segment is appended to, and a full disk refuses the next write)
            big = [spec("echo", "x" * 2000) for _ in range(600)]
            with pytest.raises(Refused) as refused:
                await b.submit(big, time.time())
            assert "No space left" in refused.value.message
            assert [j.id for j in await b.select(None, None, 100)] == kept
            assert (await b.summary()).total == 1 and not b.health().writable
            ballast.unlink()
            while not b.health().writable:
                await anyio.sleep(0.01)  # healing retries every retry_interval (0.05 s)
            more = [r.job.id for r in await b.submit([spec()], time.time())]
            assert [j.id for j in await b.select(None, None, 100)] == sorted(
                kept + more, reverse=True
            )

    anyio.run(main)


# ------------------------------------------------------------------ the dispatcher


@contextlib.asynccontextmanager
async def dispatching(
    settings: Settings, state: State | None = None, scope: anyio.CancelScope | None = None
) -> AsyncIterator[Core]:
    """A Core (over `state`) whose dispatcher runs real commands, in `scope` if given;
    stopped gracefully at the end, unless `scope` was cancelled meanwhile."""
    state = State() if state is None else state
    scope = anyio.CancelScope() if scope is None else scope
    journal = Journal(settings.journal_dir, 1, "always")
    core = Core(LocalBackend(state, journal, settings, random.Random(3)), settings)
    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:
            await tg.start(core.backend.run)
            done = anyio.Event()

            async def dispatch() -> None:
                with scope:
                    await core.dispatcher.dispatch()
                done.set()

            tg.start_soon(dispatch)
            yield core
            if not scope.cancel_called:
                await core.dispatcher.shutdown()
            await done.wait()
            await core.backend.close()
            tg.cancel_scope.cancel()
    replayed = recover(settings.journal_dir, cut_torn_tail=False, now=time.time()).state
    assert_same(replayed, state, journal.last_lsn)


async def submit(core: Core, *specs: JobSpec) -> list[int]:
    results = await core.handle(protocol.Submit(list(specs)))
    return [r.job.id for r in results]


async def started(core: Core, job_id: int) -> Job:
    with core.backend.feed.listen(frozenset({job_id})) as listener:
        while (job := await core.backend.get(job_id)).status != "running":
            await listener.take()
    return job


def test_the_dispatcher_runs_commands_and_records_how_they_ended(tmp_path: Path) -> None:
    async def main() -> None:
        async with dispatching(settings_in(tmp_path)) as core:
            ok, bad = await submit(core, spec("true"), spec("sh", "-c", "exit 3", max_retries=0))
            jobs = {j.id: j for j in await core.backend.wait([ok, bad], HANG)}
            assert (jobs[ok].status, jobs[ok].exit_code) == ("completed", 0)
            assert (jobs[bad].status, jobs[bad].exit_code) == ("failed", 3)
            assert core.dispatcher.running() == []

    anyio.run(main)


def test_cancel_stops_a_running_command_and_a_stop_requeues_another(tmp_path: Path) -> None:
    async def main() -> None:
        async with dispatching(settings_in(tmp_path)) as core:
            doomed, survivor = await submit(core, spec("sleep", "60"), spec("sleep", "60"))
            await started(core, doomed)
            await started(core, survivor)
            assert sorted(core.dispatcher.running()) == [doomed, survivor]
            [cancelled] = await core.handle(protocol.Cancel([doomed]))
            assert cancelled.status == "cancelled"
            assert core.dispatcher.running() == [survivor]
        job = await core.backend.get(survivor)
        assert (job.status, job.attempts) == ("pending", 0), "requeued, its attempt not spent"

    anyio.run(main)


class _CancelsOnAppend(Journal):
    """A journal that, once armed, cancels `scope` as soon as the next request's record is
    appended: where a stop's cancel (serving.cancel() in daemon.run) lands on a request
    whose change is applied and on its way to the disk."""

    scope: anyio.CancelScope | None = None

    def append_kept(self, *args: Any, **kwargs: Any) -> Any:
        if self.scope is not None:
            asyncio.get_running_loop().call_soon(self.scope.cancel)
            self.scope = None
        return super().append_kept(*args, **kwargs)


def test_a_clear_cancelled_once_applied_still_removes_the_logs(tmp_path: Path) -> None:
    """A `clear` whose jobs are forgotten (the record appended, applied) and whose request
    is then cancelled (a stop) removes their logs all the same: the journal forgets the
    jobs for good, and nothing would remove those files later (an audit found them
    left behind)."""
    settings = settings_in(tmp_path)
    state = State()

    async def main() -> None:
        journal = _CancelsOnAppend(settings.journal_dir, 1, "always")
        core = Core(LocalBackend(state, journal, settings, random.Random(3)), settings)
        with anyio.fail_after(HANG):
            async with anyio.create_task_group() as tg:
                await tg.start(core.backend.run)
                tg.start_soon(core.dispatcher.dispatch)
                [job_id] = await submit(core, spec("echo", "output of the job"))
                [done] = await core.backend.wait([job_id], HANG)
                assert done.status == "completed"
                log = core.logs.path(job_id)
                assert log.read_text() == "output of the job\n"
                with anyio.CancelScope() as scope:
                    journal.scope = scope
                    await core.handle(protocol.Clear(None, None))
                assert scope.cancel_called and journal.scope is None, "not cancelled"
                assert job_id not in state.jobs, "the clear forgot nothing"
                assert not log.exists(), "the cleared job's log was left behind"
                await core.dispatcher.shutdown()
                await core.backend.close()
                tg.cancel_scope.cancel()

    anyio.run(main)
    replayed = recover(settings.journal_dir, cut_torn_tail=False, now=time.time()).state
    assert not replayed.jobs, "the clear is durable: the jobs are gone for good"


def test_a_command_cancelled_as_its_log_is_trimmed_at_its_end_keeps_its_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that exited is reaped, then its log trimmed (a thread call) before its outcome
    is returned: a cancel of the dispatcher's runners landing at the start of that thread
    call (a stop requested as the job's exit woke its task) lost the outcome, and a job
    that exited 0 was requeued to run again (an audit found it). The cancel is asked right
    there: by the size check that decides the final trim (the job's process reaped)."""
    settings = settings_in(tmp_path, log_max_bytes=1000)
    real_over_cap = output.over_cap
    state = State()
    scopes: list[anyio.CancelScope] = []

    def over_cap(path: Path, cap: int) -> bool:
        job = state.jobs[int(path.stem)]
        if job.pid is not None and not Path(f"/proc/{job.pid}").exists():  # reaped
            scopes[0].cancel()
        return real_over_cap(path, cap)

    monkeypatch.setattr(output, "over_cap", over_cap)

    async def main() -> None:
        scope = anyio.CancelScope()
        scopes.append(scope)
        async with dispatching(settings, state, scope) as core:
            [job_id] = await submit(core, spec("sh", "-c", "head -c 100000 /dev/zero"))
            # until the job has ended, or the dispatcher stopped without ending it
            while not (scope.cancelled_caught or (await core.backend.get(job_id)).finished):
                await anyio.sleep(0.01)
            assert scope.cancel_called, "no final trim: the test cancelled nothing"
            job = await core.backend.get(job_id)
            assert (job.status, job.exit_code) == ("completed", 0), "its outcome was lost"
            assert core.logs.path(job_id).stat().st_size < 100000, "the log was not trimmed"

    anyio.run(main)


class ReadsRefused:
    """The local backend, its schedule reads refused while `refusing` is set, as the
    PostgreSQL backend's are when no pooled connection comes (`refused` counts them)."""

    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend
        self.refusing = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def _refuse(self) -> None:
        if self.refusing:
            self.refused += 1
            raise Refused("refused", "PostgreSQL cannot be reached (a test)")

    async def schedules(self) -> list[Any]:
        self._refuse()
        return await self._backend.schedules()

    async def get_schedule(self, name: str) -> Any:
        self._refuse()
        return await self._backend.get_schedule(name)


def test_a_schedule_told_while_reads_are_refused_is_read_again_and_fires(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A schedule added elsewhere and told to the Scheduler (as another node's NOTIFY is)
    while the store refuses reads: it is read once reads work again, and fires. (Cleared
    before the read, the names to read again were lost, and such a schedule never fired
    on this node.) A store that refuses reads yet still tells of changes cannot be had on
    demand (a stopped PostgreSQL drops the LISTEN connection too, and the gap makes every
    node read everything again), so the real local backend's reads are refused here."""
    from phxqd.schedules_model import ScheduleSpec
    from phxqd.schedules_runner import Scheduler
    from tests.test_postgres import SCHEDULES_BACK, SCHEDULES_CUT_OFF

    def every_second(name: str) -> ScheduleSpec:
        return ScheduleSpec(name, spec("true"), every=1.0, catch_up="all", overlap="allow")

    async def fired(b: LocalBackend, name: str) -> int:
        while not (s := await b.get_schedule(name)) or not s.fired:
            await anyio.sleep(0.02)
        return s.fired

    async def main() -> None:
        async with running(settings_in(tmp_path)) as rig:
            store = ReadsRefused(rig.backend)
            scheduler = Scheduler(store)  # type: ignore[arg-type]
            await rig.backend.set_schedule(every_second("tick"), time.time(), "runtime")
            async with anyio.create_task_group() as tg:
                tg.start_soon(scheduler.run)
                await fired(rig.backend, "tick")  # it runs, and has read what there was
                store.refusing = True
                await rig.backend.set_schedule(every_second("late"), time.time(), "runtime")
                scheduler.changed("late")
                while store.refused < 3:  # refused, then refused when tried again
                    await anyio.sleep(0.01)
                store.refusing = False
                await fired(rig.backend, "late")
                tg.cancel_scope.cancel()

    anyio.run(main)
    said = [r.getMessage() for r in caplog.records if r.name == "phxqd.schedules"]
    assert sum(SCHEDULES_CUT_OFF in m for m in said) == 1, said
    assert sum(SCHEDULES_BACK in m for m in said) == 1, said
