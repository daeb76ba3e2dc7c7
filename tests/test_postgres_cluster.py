"""Three phxqd nodes (three processes, three state dirs and sockets, as on three hosts)
sharing one PostgreSQL database: what holds across nodes, and what each failure does."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from phxqctl import Client
from phxqd.model import Call, JobSpec
from phxqd.postgres import schema
from tests.conftest import Daemon, until
from tests.pgfixture import Cluster
from tests.test_postgres import node
from tests.test_schedules_daemon import fired, lines

ROOT = str(Path(__file__).resolve().parent.parent)
#: the lease of the nodes in these tests (30 s in production): short, so a lost node's
#: jobs come back quickly, but several heartbeats long on a loaded machine
LEASE = 3.0


def three(tmp: Path, uri: str, workers: int = 2, **keys: object) -> list[Daemon]:
    return [node(tmp / f"node{i}", uri, workers, LEASE, **keys).start() for i in range(3)]


def client(d: Daemon) -> Client:
    return Client(d.socket, timeout=120)


def mark_specs(path: Path, n: int, **fields: object) -> list[JobSpec]:
    call = Call("tests.jobs.marks:mark", [str(path)])
    return [JobSpec(call=call, cwd=ROOT, **fields) for _ in range(n)]  # type: ignore[arg-type]


def marks(path: Path) -> collections.Counter[int]:
    return collections.Counter(int(line.split()[0]) for line in path.read_text().splitlines())


def one(conn: psycopg.Connection[Any], sql: str, *args: object) -> Any:
    """The first column of the one row `sql` returns."""
    row = conn.execute(sql, args).fetchone()
    assert row is not None
    return row[0]


def waiting(conn: psycopg.Connection[Any], statement: str) -> bool:
    """Whether a session waits on a lock in a statement that begins so."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND starts_with(query, %s)"
    )
    return bool(one(conn, sql, statement))


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block, and continued after it whatever
    happens in it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def declared_lost(conn: psycopg.Connection[Any], node_id: int) -> None:
    lost = "SELECT gone FROM phxq_nodes WHERE id = %s"
    until(lambda: one(conn, lost, node_id) == "lost", 30, "the frozen node declared lost")


def rejoined(victim: Daemon) -> None:
    """The woken node found it was declared lost, and serves again as a new node."""
    until(lambda: "declared lost" in victim.logtext(), 30, "the node to find it was lost")
    victim.ok("status")


def db(uri: str) -> str:
    return uri.split("/")[3].split("?")[0]


def test_ten_thousand_jobs_on_three_nodes_none_twice_none_lost(pg_uri: str, tmp_path: Path) -> None:
    nodes = three(tmp_path, pg_uri, workers=2)
    ran = tmp_path / "ran"
    ids: list[int] = []
    lock = threading.Lock()

    def submit(d: Daemon) -> None:
        with client(d) as c:
            for _ in range(5):
                got = [r.job.id for r in c.submit_batch(mark_specs(ran, 667))]
                with lock:
                    ids.extend(got)

    threads = [threading.Thread(target=submit, args=(d,)) for d in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 10_005
    with client(nodes[0]) as c:
        until(lambda: c.status()["counts"]["completed"] == 10_005, 120, "every job to complete")
        assert c.status()["counts"]["failed"] == 0
    seen = marks(ran)
    assert set(seen) == set(ids), "every job ran"
    assert max(seen.values()) == 1, "none ran twice"
    by_node = collections.Counter(line.split()[2] for line in ran.read_text().splitlines())
    assert len(by_node) >= 2, f"the work was shared: {by_node}"


def test_a_queue_limit_holds_across_the_cluster(pg_uri: str, tmp_path: Path) -> None:
    nodes = three(tmp_path, pg_uri, workers=3)
    nodes[0].ok("queue", "set", "narrow", "--concurrency", "2")
    crowd = tmp_path / "crowd"
    crowd.mkdir()
    call = Call("tests.jobs.marks:crowd", [str(crowd), 0.1])
    specs = [JobSpec(call=call, cwd=ROOT, queue="narrow") for _ in range(24)]
    with client(nodes[1]) as c:
        ids = [r.job.id for r in c.submit_batch(specs)]
        jobs = c.wait(ids, timeout=120)
    assert [j.status for j in jobs] == ["completed"] * 24
    assert max(j.result for j in jobs) <= 2, "never more than 2 at once"
    assert max(j.result for j in jobs) == 2, "the limit was reached (the test can fail)"


def test_dependencies_and_keys_across_nodes(pg_uri: str, tmp_path: Path) -> None:
    a, b, c = three(tmp_path, pg_uri)
    first = a.submit("sleep", "0.3")
    second = b.submit("true", opts=("--after", str(first)))
    third = c.submit("true", opts=("--after", str(second)))
    c.ok("wait", str(third))
    jobs = [a.job(i) for i in (first, second, third)]
    assert [j["status"] for j in jobs] == ["completed"] * 3
    assert jobs[1]["started_at"] >= jobs[0]["finished_at"]
    assert jobs[2]["started_at"] >= jobs[1]["finished_at"]
    # a dedup race: the three nodes submit one key at once, many times
    results: list[int] = []
    lock = threading.Lock()
    go = threading.Barrier(3)

    def race(d: Daemon) -> None:
        with client(d) as cl:
            go.wait()
            for _ in range(20):
                job = cl.submit(["sleep", "30"], key="only-one")
                with lock:
                    results.append(job.id)

    threads = [threading.Thread(target=race, args=(d,)) for d in (a, b, c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1, "one live job per key, whichever node was asked"
    a.ok("cancel", str(results[0]))


def running_on(nodes: list[Daemon], job: dict[str, object]) -> Daemon:
    """The node whose phxqd is the parent of the job's process."""
    parent = psutil.Process(int(job["pid"])).ppid()  # type: ignore[call-overload]
    [found] = [d for d in nodes if d.proc is not None and d.proc.pid == parent]
    return found


def test_cancel_from_another_node_kills_the_job_where_it_runs(pg_uri: str, tmp_path: Path) -> None:
    nodes = three(tmp_path, pg_uri)
    job_id = nodes[0].submit("sleep", "60")
    until(lambda: nodes[0].job(job_id)["status"] == "running", what="the job to run")
    job = nodes[0].job(job_id)
    host = running_on(nodes, job)
    other = next(d for d in nodes if d is not host)
    began = time.monotonic()
    assert f"job {job_id} cancelled" in other.ok("cancel", str(job_id))
    took = time.monotonic() - began
    assert not psutil.pid_exists(job["pid"]) or psutil.Process(job["pid"]).status() == "zombie"  # type: ignore[arg-type]
    assert other.job(job_id)["status"] == "cancelled"
    assert took < 5, f"cancel across nodes took {took:.1f}s"


def test_a_killed_node_s_jobs_run_elsewhere_after_the_lease_and_a_late_outcome_is_refused(
    pg_uri: str, tmp_path: Path
) -> None:
    nodes = three(tmp_path, pg_uri, workers=1)
    # a first attempt that lasts, retries that do not; one per node (one worker each)
    script = 'if [ "$PHXQ_ATTEMPT" = 1 ]; then exec sleep 4; fi'
    opts = ("--retries", "2", "--backoff", "0.1,0.1,0")
    ids = [nodes[0].submit("sh", "-c", script, opts=opts) for _ in range(3)]

    def running() -> list[dict[str, object]]:
        out = nodes[0].ok("--json", "list", "--status", "running")
        return [json.loads(line) for line in out.splitlines()]

    jobs = {int(j["id"]): j for j in until(lambda: len(running()) == 3 and running())}  # type: ignore[call-overload]
    host = {i: running_on(nodes, jobs[i]) for i in ids}
    killed_job, stopped_job = ids[0], ids[1]
    killed, stopped = host[killed_job], host[stopped_job]
    # kill -9 of one node (and of its job: systemd kills the unit's cgroup with it)
    os.killpg(int(jobs[killed_job]["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    killed.kill9()
    # SIGSTOP of another: its job ends while its phxqd cannot say so
    assert stopped.proc is not None
    stopped.proc.send_signal(signal.SIGSTOP)
    survivor = next(d for d in nodes if d not in (killed, stopped))
    try:
        for i in (killed_job, stopped_job):
            until(lambda i=i: survivor.job(i)["attempts"] >= 2, 30, f"job {i} to run again")
        pid = int(jobs[stopped_job]["pid"])  # type: ignore[call-overload]
        until(
            lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
            what="the first attempt on the stopped node to end",
        )
    finally:
        stopped.proc.send_signal(signal.SIGCONT)
    until(lambda: "dropping the outcome" in stopped.logtext(), 30, "the late outcome refused")
    survivor.ok("wait", *map(str, ids))
    for i in ids:
        job = survivor.job(i)
        assert job["status"] == "completed", job
    assert survivor.job(killed_job)["attempts"] == 2
    assert survivor.job(stopped_job)["attempts"] == 2, "the late outcome changed nothing"


@pytest.fixture
def load() -> Iterator[list[threading.Thread]]:
    threads: list[threading.Thread] = []
    yield threads
    for t in threads:
        t.join(60)


def test_connections_cut_and_a_postgres_restart_lose_no_acknowledged_job(
    pg_uri: str, pg_cluster: Cluster, tmp_path: Path
) -> None:
    nodes = three(tmp_path, pg_uri)
    acknowledged: list[int] = []
    refused = 0
    stop = threading.Event()
    lock = threading.Lock()

    def submitter(d: Daemon) -> None:
        nonlocal refused
        while not stop.is_set():
            try:
                with client(d) as c:
                    while not stop.is_set():
                        job = c.submit(["true"])
                        with lock:
                            acknowledged.append(job.id)
            except Exception:
                with lock:
                    refused += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=submitter, args=(d,)) for d in nodes]
    for t in threads:
        t.start()
    try:
        until(lambda: len(acknowledged) > 50, what="submits to flow")
        pg_cluster.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE datname = '{db(pg_uri)}' AND pid <> pg_backend_pid()"
        )
        before = len(acknowledged)
        until(lambda: len(acknowledged) > before + 50, what="submits to flow again")
        pg_cluster.restart()
        before = len(acknowledged)
        until(lambda: len(acknowledged) > before + 50, 60, "submits to flow after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    with client(nodes[0]) as c:
        jobs = c.wait(acknowledged, timeout=20)
    assert len(jobs) == len(acknowledged), "every acknowledged job is there"
    stuck = [j for j in jobs if j.status != "completed"]
    if stuck:  # pytest.fail, not assert: an assert's message is cut to a line or two
        pytest.fail(
            "\n".join(
                [
                    f"not completed: {[(j.id, j.status) for j in stuck[:10]]}",
                    pg_cluster.sql(
                        "SELECT id, status, node, claim, attempts FROM phxq_jobs"
                        " WHERE status <> 'completed' LIMIT 10",
                        db(pg_uri),
                    ),
                    pg_cluster.sql("SELECT * FROM phxq_nodes", db(pg_uri)),
                    *(f"--- node {i} log:\n{d.logtext()[-4000:]}" for i, d in enumerate(nodes)),
                ]
            )
        )
    # every node noticed and re-opened its LISTEN connection
    for d in nodes:
        assert "lost the LISTEN connection" in d.logtext()
    # a job submitted on one node is heard of at once by the others (LISTEN works again)
    with client(nodes[1]) as c:
        job = c.submit(["true"])
        [done] = c.wait([job.id], timeout=30)
        assert done.status == "completed"
    json.dumps(refused)


def test_logs_on_another_host_show_the_tail_and_retention_purges_everywhere(
    pg_uri: str, tmp_path: Path
) -> None:
    nodes = three(tmp_path, pg_uri, retention=4.0)
    job_id = nodes[0].submit("sh", "-c", "seq 1 20000; echo the end")
    nodes[0].ok("wait", str(job_id))
    [ran] = [d for d in nodes if (d.state_dir / "logs" / f"{job_id}.log").exists()]
    other = next(d for d in nodes if d is not ran)
    here = ran.ok("logs", str(job_id))
    assert here.startswith("1\n2\n") and here.endswith("20000\nthe end\n")
    there = other.ok("logs", str(job_id))
    first, _, tail = there.partition("\n")
    assert first.startswith(f"[phxq: job {job_id} ran on ") and "which has its whole log" in first
    assert tail.endswith("20000\nthe end\n") and len(tail) == 64 * 1024
    # retention: the job is forgotten, and its log with it on the host that has it
    until(lambda: other.ctl("show", str(job_id)).returncode != 0, 30, "the job to be purged")
    until(
        lambda: not (ran.state_dir / "logs" / f"{job_id}.log").exists(),
        30,
        "its log to be removed where it is",
    )


def test_an_every_second_schedule_fires_each_time_once_on_three_nodes(
    pg_uri: str, tmp_path: Path
) -> None:
    """Every node runs a Scheduler; each fire time gets exactly one job, whichever node
    fires it. A schedule added on A, paused on B, removed on C is seen by every node; once
    A stops, the others fire it (their Schedulers were told of it when A added it)."""
    a, b, c = three(tmp_path, pg_uri)
    # catch-up `all`: a fire time a loaded machine reaches late still gets its job, so
    # every time between the first and the last must be there
    a.ok("schedule", "add", "tick", "--every", "1s", "--catch-up", "all", "--", "true")
    for d in (a, b, c):
        assert [s["name"] for s in lines(d, "schedule", "list")] == ["tick"]
    until(lambda: len(fired(b, "tick")) >= 3, 30, "three fire times")
    a.stop()
    stopped = time.time()
    until(lambda: max(fired(b, "tick")) > stopped + 1.5, 30, "fires after A stopped")
    b.ok("schedule", "pause", "tick")
    paused = time.time()
    assert c.json("schedule", "show", "tick")["paused"] is True
    time.sleep(2.0)  # two periods paused: no node fires
    c.ok("schedule", "remove", "tick")
    for d in (b, c):
        assert d.ok("--json", "schedule", "list").strip() == ""
    ticks = fired(c, "tick")
    assert all(len(jobs) == 1 for jobs in ticks.values()), "one job per fire time"
    times = sorted(ticks)
    assert times == [times[0] + k for k in range(len(times))], "every fire time, once"
    assert times[-1] <= paused + 1.0, "none fired while paused"
    assert len({job["key"] for jobs in ticks.values() for job in jobs}) == len(times)


def test_a_start_rate_holds_across_the_cluster(pg_uri: str, tmp_path: Path) -> None:
    nodes = three(tmp_path, pg_uri, workers=2)
    nodes[0].ok("queue", "set", "slow", "--rate", "8/s", "--burst", "2")
    [queue] = [q for q in lines(nodes[2], "queue", "list") if q["queue"] == "slow"]
    assert (queue["rate"], queue["burst"], queue["rate_from"]) == (8.0, 2, "runtime")
    ran = tmp_path / "ran"
    with client(nodes[1]) as cl:
        ids = [r.job.id for r in cl.submit_batch(mark_specs(ran, 40, queue="slow"))]
        jobs = cl.wait(ids, timeout=60)
    assert [j.status for j in jobs] == ["completed"] * 40
    starts = sorted(j.started_at for j in jobs if j.started_at is not None)
    # In every one-second window, no more starts than the bucket lets go (8, and its
    # burst of 2), with the slack of a burst: the bucket counts claims, and a claimed job
    # starts a moment later on its node (three nodes on a loaded machine)
    for i, t in enumerate(starts):
        window = sum(1 for u in starts[i:] if u < t + 1.0)
        assert window <= 8 + 2 + 2, (window, [round(u - t, 3) for u in starts[i:]])
    assert starts[-1] - starts[0] >= (40 - 2) / 8 - 0.5, "the rate held them back"
    by_node = collections.Counter(line.split()[2] for line in ran.read_text().splitlines())
    assert len(by_node) >= 2, f"the nodes shared the queue: {by_node}"


def test_a_node_frozen_inside_its_heartbeat_is_still_declared_lost(
    pg_uri: str, tmp_path: Path
) -> None:
    """A node stopped (SIGSTOP) while its heartbeat's transaction holds the lock on its
    own row must not keep the others from declaring it lost: PostgreSQL ends that
    transaction after half the lease (idle_in_transaction_session_timeout), and the
    reaper's UPDATE of the row goes through. Frozen there on purpose: the test holds the
    node's row itself so that the node's heartbeat waits on it, stops the node, then lets
    the heartbeat through, which then holds the row for a node that cannot commit."""
    # the other node is the one that reaps
    victim, _other = (node(tmp_path / f"node{i}", pg_uri, 1, LEASE).start() for i in range(2))
    assert victim.proc is not None
    pid = victim.proc.pid

    with psycopg.connect(pg_uri, autocommit=True) as conn, psycopg.connect(pg_uri) as holder:
        me = one(conn, "SELECT id FROM phxq_nodes WHERE pid = %s AND gone IS NULL", pid)
        holder.execute("SELECT 1 FROM phxq_nodes WHERE id = %s FOR UPDATE", (me,))
        heartbeat = "UPDATE phxq_nodes SET heartbeat_at"
        until(lambda: waiting(conn, heartbeat), 30, "the node's heartbeat to wait on its row")
        with frozen(pid):
            holder.commit()  # the stopped node's heartbeat now holds its row
            declared_lost(conn, me)
    rejoined(victim)


def test_a_node_frozen_while_it_sends_a_claim_is_still_declared_lost(
    pg_uri: str, tmp_path: Path
) -> None:
    """A node stopped (SIGSTOP) in the middle of a transaction it sends as a pipeline (its
    writer's: the claim among the rest) must not keep the others from declaring it lost.
    Such a session stays "active" on the server, waiting for the rest of the pipeline,
    where idle_in_transaction_session_timeout does not reach: it kept the node's row
    locked (FOR SHARE) for as long as the node was frozen, and the reaper's UPDATE waited
    on it, failing its own node's heartbeats meanwhile. The reaper now ends the sessions
    of a node past its lease. Frozen there on purpose: the test holds the node's row so
    that its claim waits on it, stops the node, then lets the claim through."""
    victim = node(tmp_path / "victim", pg_uri, 1, LEASE).start()
    assert victim.proc is not None
    pid = victim.proc.pid

    with psycopg.connect(pg_uri, autocommit=True) as conn, psycopg.connect(pg_uri) as holder:
        me = one(conn, "SELECT id FROM phxq_nodes WHERE pid = %s AND gone IS NULL", pid)
        holder.execute("SELECT 1 FROM phxq_nodes WHERE id = %s FOR UPDATE", (me,))
        with client(victim) as c:  # (a submit locks no node's row)
            c.submit_batch([JobSpec(argv=["true"])])
        claim = "WITH me AS (SELECT id FROM phxq_nodes"
        until(lambda: waiting(conn, claim), 30, "the node's claim to wait on its row")
        with frozen(pid):
            holder.commit()  # the claim takes the row, and the rest of it never comes
            reaper = node(tmp_path / "reaper", pg_uri, 1, LEASE).start()
            declared_lost(conn, me)
    rejoined(victim)
    assert "no answer from PostgreSQL" not in reaper.logtext(), "the reaper was never held up"


def test_a_node_frozen_holding_the_migration_lock_keeps_no_other_from_starting(
    pg_uri: str, tmp_path: Path
) -> None:
    """A node stopped (SIGSTOP) at its start-up while it holds the schema migration's
    lock (a session lock, between transactions) must not keep the others from starting:
    PostgreSQL ends its session once idle for half the lease (idle_session_timeout).
    Frozen there on purpose: the test holds the lock itself so that the node waits on it,
    stops the node, then lets the lock go to the stopped node's session."""

    with (
        psycopg.connect(pg_uri, autocommit=True) as conn,
        psycopg.connect(pg_uri, autocommit=True) as holder,
    ):
        holder.execute("SELECT pg_advisory_lock(%s)", (schema.MIGRATION_LOCK,))
        stopped = node(tmp_path / "frozen", pg_uri, 1, LEASE).start(expect_ready=False)
        assert stopped.proc is not None
        lock = "SELECT pg_advisory_lock"
        until(lambda: waiting(conn, lock), 30, "the node to wait for the migration lock")
        with frozen(stopped.proc.pid):
            holder.execute("SELECT pg_advisory_unlock(%s)", (schema.MIGRATION_LOCK,))
            held = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objid = %s"
            )
            until(lambda: one(conn, held, schema.MIGRATION_LOCK) > 0, 30, "the lock, frozen")
            other = node(tmp_path / "other", pg_uri, 1, LEASE).start()  # waits for ready
            other.ok("status")
    # woken, the frozen node finds its connection gone: it does not start (nor hang)
    assert stopped.proc.wait(60) != 0
    assert "cannot use the PostgreSQL store" in stopped.logtext()
