"""The rules of backend.py, checked in process on the PostgreSQL backend (as
tests/test_backend.py checks them on the local one): a real PostgreSQL, real anyio, no
daemon and no socket. And the schema's migrations, with several nodes starting at once."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import msgspec
import psycopg
import pytest

from phxqd.backend import SHUTDOWN, Begun, Ending
from phxqd.model import Job, JobSpec, QueueConfig
from phxqd.postgres import schema
from phxqd.postgres.backend import PostgresBackend
from phxqd.protocol import Refused
from phxqd.schedules_model import ScheduleSpec
from tests.conftest import settings_in
from tests.pgfixture import Cluster
from tests.pgfixture import running_backend as running

HANG = 30.0


def spec(*argv: str, **fields: object) -> JobSpec:
    return JobSpec(argv=list(argv or ("true",)), **fields)  # type: ignore[arg-type]


def test_claims_keep_priority_limits_pauses_and_give_backs(pg_uri: str, tmp_path: Path) -> None:
    settings = settings_in(tmp_path, queues={"q": QueueConfig(concurrency=1)}, workers=4)

    async def main() -> None:
        async with running(pg_uri, settings) as b:
            now = time.time()
            low, high, other = (
                r.job
                for r in await b.submit([spec(queue="q"), spec(queue="q", priority=5), spec()], now)
            )
            await b.claimable()
            got = [b.claim(now), b.claim(now), b.claim(now)]
            assert [j.id if j else None for j in got] == [high.id, other.id, None], (
                "q is at its limit after its best job; the next is another queue's"
            )
            assert (await b.summary()).busy == {"q": 1, "default": 1}
            b.report([Begun(high, now, None, None)], [])
            b.report([], [Ending(high, True, exit_code=0)])
            [done] = await b.wait([high.id], HANG)
            assert done.status == "completed" and done.attempts == 1
            await b.pause("q")
            await b.claimable()
            assert b.claim(now) is None, "q is paused"
            await b.resume("q")
            await b.claimable()
            again = b.claim(now)
            assert again is not None and again.id == low.id
            b.report([], [Ending(again, False)])  # given back unstarted: first in line
            assert b.claim(now) is again
            held = got[1]
            assert held is not None
            b.report([], [Ending(again, False, stop_reason=SHUTDOWN), Ending(held, False)])
            assert b.claim(now) is held
            b.report([], [Ending(held, False, stop_reason="cancelled")])
            [cancelled] = await b.wait([other.id], HANG)
            assert (cancelled.status, cancelled.attempts) == ("cancelled", 0)

    anyio.run(main)


async def claim(b: PostgresBackend, job_id: int) -> Job:
    """Claim until `job_id` comes (others are given back)."""
    with anyio.fail_after(HANG):
        while True:
            await b.claimable()
            while (job := b.claim(time.time())) is not None:
                if job.id == job_id:
                    return job
                b.report([], [Ending(job, False, stop_reason=SHUTDOWN)])
            await anyio.sleep(0.02)


def test_retries_by_policy_keys_and_cascades(pg_uri: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with running(pg_uri, settings_in(tmp_path)) as b:
            quick = (0.05, 0.05, 0.0)
            [job] = [r.job for r in await b.submit([spec(max_retries=1, backoff=quick)], 0)]
            [after] = [r.job for r in await b.submit([spec(after=[job.id])], time.time())]
            with pytest.raises(Refused) as refused:
                await b.submit([spec(after=[10**9])], time.time())
            assert refused.value.code == "not_found"
            first = await b.submit([spec(key="k")], time.time())
            again = await b.submit([spec(key="k"), spec(key="k")], time.time())
            assert [r.deduplicated for r in again] == [True, True]
            assert {r.job.id for r in again} == {first[0].job.id}
            with b.feed.listen() as listener:
                for attempt in (1, 2):
                    claimed = await claim(b, job.id)
                    b.report([Begun(claimed, time.time(), 123, 1.0)], [])
                    b.report([], [Ending(claimed, True, exit_code=3, error="exit 3")])
                    expected = "retrying" if attempt == 1 else "failed"
                    with anyio.fail_after(HANG):
                        while (await b.get(job.id)).status != expected:
                            await anyio.sleep(0.02)
                    assert (await b.get(job.id)).attempts == attempt
                with anyio.fail_after(HANG):
                    events: list[tuple[str, int]] = []
                    while ("cancelled", after.id) not in events:
                        events += [(e.event, e.id) for e in await listener.take()]
            assert ("failed", job.id) in events
            dead = await b.get(after.id)
            assert dead.status == "cancelled" and f"job {job.id}" in (dead.error or "")

    anyio.run(main)


def test_a_late_outcome_is_dropped(pg_uri: str, tmp_path: Path) -> None:
    """An outcome fenced by a claim the cluster no longer holds changes nothing."""

    async def main() -> None:
        async with running(pg_uri, settings_in(tmp_path)) as b:
            [job] = [r.job for r in await b.submit([spec()], time.time())]
            await b.claimable()
            assert b.claim(time.time()) is not None
            b.report([Begun(job, time.time(), None, None)], [])
            async with await psycopg.AsyncConnection.connect(pg_uri, autocommit=True) as c:
                # what a reaper does to a node it took for dead
                await c.execute("UPDATE phxq_jobs SET node = NULL, status = 'retrying'")
            b.report([], [Ending(job, True, exit_code=0)])
            with anyio.fail_after(HANG):
                while b._facts or b._writing:
                    await anyio.sleep(0.02)
            assert (await b.get(job.id)).status == "retrying"

    anyio.run(main)


def test_jobs_a_claim_got_after_all_are_given_back(pg_uri: str, tmp_path: Path) -> None:
    """A claiming transaction whose connection dropped during its commit may have
    committed: its jobs are then this node's, unstarted, and would wait for ever.

    Found by test_postgres_cluster's connection cuts (a job left pending). A commit that
    goes through while its reply is lost cannot be produced on demand, so this test makes
    the claim with its own connection (as the lost commit would have) and starts where
    the writer is when such a transaction fails: its claim in doubt."""

    async def main() -> None:
        async with running(pg_uri, settings_in(tmp_path)) as b:
            [job] = [r.job for r in await b.submit([spec()], time.time())]
            async with await psycopg.AsyncConnection.connect(pg_uri, autocommit=True) as c:
                await c.execute(
                    "UPDATE phxq_jobs SET node = %s, claim = claim + 1 WHERE id = %s",
                    (b.node, job.id),
                )
            await b.claimable()
            assert b.claim(time.time()) is None, "the job is claimed, by a claim b never saw"
            b._in_doubt = True  # what the writer sets when a claiming transaction fails
            b._facts_ready.set()
            with anyio.fail_after(HANG):
                while b._in_doubt or b._facts or b._writing:
                    await anyio.sleep(0.02)
            got = await claim(b, job.id)
            assert got.id == job.id, "given back, then claimed again"

    anyio.run(main)


def test_nodes_starting_at_once_migrate_the_schema_once(pg_cluster: Cluster) -> None:
    name = f"empty{time.monotonic_ns()}"
    pg_cluster.sql(f"CREATE DATABASE {name}")
    uri = pg_cluster.uri(name)
    before: list[int] = []

    async def main() -> None:
        async def one() -> None:
            before.append(await schema.migrate_uri(uri))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)

    anyio.run(main)
    assert sorted(before) == [0, schema.VERSION, schema.VERSION, schema.VERSION]
    assert pg_cluster.sql("SELECT count(*) FROM phxq_schema", name) == str(schema.VERSION)
    pg_cluster.sql(
        f"UPDATE phxq_schema SET version = {schema.VERSION + 1} WHERE version = {schema.VERSION}",
        name,
    )
    with pytest.raises(schema.SchemaError, match="newer than this phxqd"):
        anyio.run(schema.migrate_uri, uri)


def test_a_database_of_the_first_release_is_migrated_forward(pg_cluster: Cluster) -> None:
    """Migration 1 as the first release left it, then a newer phxqd starts: the later
    migrations run (the schedules table, the rate columns), and only those."""
    name = f"old{time.monotonic_ns()}"
    pg_cluster.sql(f"CREATE DATABASE {name}")
    pg_cluster.sql(
        "CREATE TABLE phxq_schema (version integer PRIMARY KEY,"
        " applied_at timestamptz NOT NULL DEFAULT now())",
        name,
    )
    pg_cluster.sql(schema.MIGRATIONS[0], name)
    pg_cluster.sql("INSERT INTO phxq_schema (version) VALUES (1)", name)
    pg_cluster.sql("INSERT INTO phxq_queues (queue, concurrency) VALUES ('q', 2)", name)
    assert anyio.run(schema.migrate_uri, pg_cluster.uri(name)) == 1
    assert pg_cluster.sql("SELECT count(*) FROM phxq_schedules", name) == "0"
    assert pg_cluster.sql("SELECT queue, concurrency, rate FROM phxq_queues", name) == "q|2|"


def test_a_cancel_from_another_node_ends_a_job_claimed_and_not_yet_handed_out(
    pg_uri: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with (
            running(pg_uri, settings_in(tmp_path / "a")) as a,
            running(pg_uri, settings_in(tmp_path / "b")) as b,
        ):
            [job] = [r.job for r in await b.submit([spec()], time.time())]
            await a.claimable()  # claimed by a, in its batch, not handed to its dispatcher
            assert [h.job.id for h in a._batch] == [job.id]
            assert await b.cancel([job.id], time.time()) == [job.id], "a holds it"
            [done] = await b.wait([job.id], HANG)
            assert done.status == "cancelled" and done.attempts == 0
            assert a.claim(time.time()) is None, "a does not hand it out any more"

    anyio.run(main)


def test_each_fire_time_fires_on_one_node_and_overlap_reads_the_last_job(
    pg_uri: str, tmp_path: Path
) -> None:
    """Two nodes fire the same times at once, many times over: one job per time, the
    other node refused `fired already`; a paused schedule fires nothing; overlap `skip`
    and `queue` look at the previous firing's job whichever node made it."""

    async def main() -> None:
        async with (
            running(pg_uri, settings_in(tmp_path / "a")) as a,
            running(pg_uri, settings_in(tmp_path / "b")) as b,
        ):
            now = float(int(time.time()))
            await a.set_schedule(
                ScheduleSpec("s", spec(), every=1.0, overlap="allow"), now, "runtime"
            )
            outcomes: list[str] = []

            async def fire(node: PostgresBackend, at: float) -> None:
                try:
                    fired = await node.fire("s", [at], at, 0)
                    outcomes.append(f"job {fired.job.id if fired.job else None}")
                except Refused as e:
                    assert "already" in e.message, e.message
                    outcomes.append("refused")

            for k in range(1, 21):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(fire, a, now + k)
                    tg.start_soon(fire, b, now + k)
            assert outcomes.count("refused") == 20 and len(set(outcomes)) == 21
            s = await b.get_schedule("s")
            assert s is not None and (s.fired, s.last_fire) == (20, now + 20)
            # paused on B: A's firing does nothing and records nothing
            await b.pause_schedule("s", True)
            assert (await a.fire("s", [now + 21], now + 21, 0)).skipped == "the schedule is paused"
            await b.pause_schedule("s", False)
            # overlap: the previous job (made by B) is still pending
            running_spec = ScheduleSpec("s", spec(), every=1.0, overlap="skip")
            await b.set_schedule(running_spec, now, "runtime")
            assert (await b.fire("s", [now + 22], now + 22, 0)).skipped is not None
            await a.set_schedule(
                msgspec.structs.replace(running_spec, overlap="queue"), now, "runtime"
            )
            queued = await a.fire("s", [now + 23], now + 23, 0)
            assert queued.blocked_by == s.last_job and not queued.jobs
            s = await a.get_schedule("s")
            assert s is not None and s.last_fire == now + 22, "a blocked firing records nothing"

    anyio.run(main)


def test_a_submit_without_dependencies_is_one_statement_that_tells_every_new_id(
    pg_uri: str, tmp_path: Path
) -> None:
    """The one-statement submit: new jobs in the batch's order (ids and queue order), a key
    once per batch and not again while its job lives, every new id told on the channel
    (in several payloads when its ranges are long), and one live job for a key that
    concurrent submits race for."""
    from phxqd.postgres import notices

    async def main() -> None:
        async with (
            running(pg_uri, settings_in(tmp_path)) as b,
            await psycopg.AsyncConnection.connect(pg_uri, autocommit=True) as listen,
        ):
            await listen.execute(f"LISTEN {notices.CHANNEL}")
            live = [r.job.id for r in await b.submit([spec(key=f"k{i}") for i in range(2000)], 0)]
            # every other spec's key has a live job: the new ids are 2,000 ranges of one
            batch = [spec(key=f"k{i // 2}") if i % 2 else spec("echo", str(i)) for i in range(4000)]
            batch[1:1] = [spec(key="fresh"), spec(key="fresh")]
            results = await b.submit(batch, 0)
            assert len(results) == len(batch)
            fresh, again = results[1], results[2]
            assert not fresh.deduplicated and again.deduplicated
            assert again.job.id == fresh.job.id
            for i, r in enumerate(results[3:], 3):
                assert r.deduplicated == (i % 2 == 1), i
                if r.deduplicated:
                    assert r.job.id == live[(i - 2) // 2]
            new = [r.job.id for r in results if not r.deduplicated]
            assert new == sorted(new)
            async with listen.cursor() as cur:
                await cur.execute(
                    "SELECT id FROM phxq_jobs WHERE id = ANY(%s) ORDER BY ord", (new,)
                )
                assert [row[0] async for row in cur] == new
            told: set[int] = set()
            payloads = 0
            with anyio.fail_after(HANG):
                async for n in listen.notifies():
                    heard = notices.decode(n.payload)
                    assert heard is not None and len(n.payload) < 8000
                    if heard.kind == "n" and set(heard.ids) <= set(new):
                        told |= set(heard.ids)
                        payloads += 1
                    if told == set(new):
                        break
            assert payloads >= 2
            # what goes as JSON comes back as it was sent
            odd = spec(
                "printf",
                "%s\\n",
                queue='q "ü" \\ ✓',
                label="l\tä'\"",
                key="k \u2028 ✓",
                run_at=1234567890.1234567,
                priority=-7,
            )
            [made] = [r.job for r in await b.submit([odd], time.time())]
            got_back = await b.get(made.id)
            assert got_back == made
            assert (got_back.queue, got_back.label, got_back.key, got_back.run_at) == (
                odd.queue,
                odd.label,
                odd.key,
                odd.run_at,
            )
            assert got_back.argv == ("printf", "%s\\n") and got_back.priority == -7
            # concurrent submits of one key: one live job, every answer names it
            got: list[int] = []

            async def one() -> None:
                [r] = await b.submit([spec(key="race")], time.time())
                got.append(r.job.id)

            async with anyio.create_task_group() as tg:
                for _ in range(24):
                    tg.start_soon(one)
            assert len(set(got)) == 1 and len(got) == 24

    anyio.run(main)


def test_a_due_time_a_claim_cannot_act_on_does_not_make_the_dispatcher_spin(
    pg_uri: str, tmp_path: Path
) -> None:
    """Paused, a delayed job's time passes: claimable() claims nothing, and next_wakeup()
    must not name a time already past (the dispatcher then looped without sleeping, at
    80% of a core whenever a node's workers were all busy, as they are when paused)."""

    async def main() -> None:
        async with running(pg_uri, settings_in(tmp_path)) as b:
            await b.pause(None)
            [job] = [r.job for r in await b.submit([spec(delay=0.3)], time.time())]
            with anyio.fail_after(HANG):
                while b.next_wakeup() != job.run_at:  # a claim saw it and the pause
                    await b.claimable()
                    await anyio.sleep(0.02)
                while time.time() <= job.run_at + 0.05:
                    await anyio.sleep(0.05)
            await b.claimable()
            assert b.claim(time.time()) is None
            wakeup = b.next_wakeup()
            assert wakeup is not None and wakeup > time.time()
            await b.resume(None)
            assert (await claim(b, job.id)).id == job.id

    anyio.run(main)


def test_a_submit_after_its_pooled_connections_were_cut_goes_through(
    pg_uri: str, tmp_path: Path
) -> None:
    """A submit is one statement that commits as it is sent, so a pooled connection the
    server has closed must not be trusted with it: PostgreSQL's closing word is seen
    first and the connection dropped unused (else this submit would be refused as "may
    or may not have been made")."""

    async def main() -> None:
        async with (
            running(pg_uri, settings_in(tmp_path)) as b,
            await psycopg.AsyncConnection.connect(pg_uri, autocommit=True) as admin,
        ):
            await b.submit([spec()], time.time())
            cur = await admin.execute(
                "SELECT array_agg(pid), count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND query NOT LIKE 'LISTEN%%'"
            )
            row = await cur.fetchone()
            assert row is not None and row[0]
            with anyio.fail_after(HANG):  # gone: each said its closing word before
                while True:
                    cur = await admin.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (row[0],)
                    )
                    left = await cur.fetchone()
                    if left is not None and left[0] == 0:
                        break
                    await anyio.sleep(0.02)
            for _ in range(5):
                [r] = await b.submit([spec()], time.time())
                assert (await b.get(r.job.id)).status == "pending"

    anyio.run(main)


def test_a_cancel_that_fails_gives_back_the_jobs_this_node_holds_unhanded(
    pg_uri: str, tmp_path: Path
) -> None:
    """`cancel` takes the jobs this node claimed ahead (and has not handed out) away from
    claim() before its transaction, which cancels them as waiting jobs. A cancel refused
    as a whole (another id unknown or finished: all-or-nothing, states.md), or cancelled
    before it committed, did nothing: those jobs must not stay claimed by this node,
    never handed out and never given back (found by an audit: each held a slot of a
    limited queue cluster-wide for as long as the node lived). They go back to the queue
    and run."""

    async def given_back(b: PostgresBackend, job_id: int) -> None:
        await b.settle()
        async with await psycopg.AsyncConnection.connect(pg_uri, autocommit=True) as c:
            cur = await c.execute("SELECT status, node FROM phxq_jobs WHERE id = %s", (job_id,))
            row = await cur.fetchone()
        assert row == ("pending", None), f"job {job_id} neither cancelled nor given back: {row}"

    async def main() -> None:
        async with running(pg_uri, settings_in(tmp_path)) as b:
            [finished] = [r.job for r in await b.submit([spec()], time.time())]
            got = await claim(b, finished.id)
            b.report([Begun(got, time.time(), None, None)], [Ending(got, True, exit_code=0)])
            await b.wait([finished.id], HANG)
            [job] = [r.job for r in await b.submit([spec()], time.time())]

            refusals = [([job.id, finished.id], "refused"), ([job.id, 10**9], "not_found")]
            for ids, code in refusals:
                await claim_ahead(b, job.id)
                with pytest.raises(Refused) as refused:
                    await b.cancel(ids, time.time())
                assert refused.value.code == code
                await given_back(b, job.id)

            await claim_ahead(b, job.id)
            with anyio.CancelScope() as scope:
                scope.cancel()  # the request cancelled (its client gone, a stop) at once
                await b.cancel([job.id], time.time())
            await given_back(b, job.id)

            got = await claim(b, job.id)
            b.report([Begun(got, time.time(), None, None)], [Ending(got, True, exit_code=0)])
            [done] = await b.wait([job.id], HANG)
            assert (done.status, done.attempts) == ("completed", 1)

    async def claim_ahead(b: PostgresBackend, job_id: int) -> None:
        with anyio.fail_after(HANG):
            while job_id not in {h.job.id for h in b._batch}:
                await b.claimable()
        assert not b._handed and not b._returned

    anyio.run(main)
