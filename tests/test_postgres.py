"""The PostgreSQL backend with one node: a real phxqd on a real PostgreSQL (the throwaway
cluster of tests/pgfixture.py, a database per test), driven through the real phxqctl.
Every command works as it does on the embedded journal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import Daemon, until
from tests.pgfixture import Cluster


def node(tmp: Path, uri: str, workers: int = 2, lease: float = 30.0, **keys: object) -> Daemon:
    """A phxqd on the store `uri`, its own state dir and socket in `tmp`."""
    d = Daemon(tmp, workers=workers, extra=["--store", uri])
    lines = [f"lease = {lease}", "kill_grace = 0.5"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    d.config.write_text("\n".join(lines) + "\n")
    return d


def test_every_command_against_one_node(pg_uri: str, tmp_path: Path) -> None:
    d = node(tmp_path, pg_uri).start()
    # submit, wait, show, logs: the output is the job's own log on this host
    first = d.submit("sh", "-c", "echo hello; echo oops >&2")
    assert "completed" in d.ok("wait", str(first))
    job = d.job(first)
    assert (job["status"], job["exit_code"], job["attempts"]) == ("completed", 0, 1)
    assert d.ok("logs", str(first)) == "hello\noops\n"
    # keys: a live key returns its job
    keyed = d.submit("sleep", "30", opts=("--key", "k1"))
    again = d.submit("true", opts=("--key", "k1"))
    assert again == keyed
    # --after: released when its dependency completes, cancelled when it fails
    gate = d.submit("sleep", "0.5")
    after_ok = d.submit("true", opts=("--after", str(gate)))
    d.ok("pause", "hold")  # so that it cannot fail before its dependent is submitted
    doomed = d.submit("false", opts=("--retries", "0", "--queue", "hold"))
    after_bad = d.submit("true", opts=("--after", str(doomed)))
    d.ok("resume", "hold")
    d.ctl("wait", str(after_ok), str(doomed), str(after_bad))
    assert d.job(after_ok)["status"] == "completed"
    assert d.job(doomed)["status"] == "failed"
    bad = d.job(after_bad)
    assert bad["status"] == "cancelled" and f"job {doomed}" in bad["error"]
    # cancel a running job: its process is gone, and the key is free again
    until(lambda: d.job(keyed)["status"] == "running", what="the keyed job to run")
    pid = d.job(keyed)["pid"]
    assert f"job {keyed} cancelled" in d.ok("cancel", str(keyed))
    assert d.job(keyed)["status"] == "cancelled" and "SIGTERM" in d.job(keyed)["error"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert d.submit("true", opts=("--key", "k1")) != keyed
    # retries with backoff, then retry and retry-failed
    flaky = d.submit("false", opts=("--retries", "1", "--backoff", "0.1,0.1,0"))
    r = d.ctl("wait", str(flaky))
    assert r.returncode == 1
    assert (d.job(flaky)["status"], d.job(flaky)["attempts"]) == ("failed", 2)
    d.ok("retry", str(flaky))
    assert d.job(flaky)["attempts"] in (0, 1, 2)
    d.ctl("wait", str(flaky))
    assert d.ok("retry-failed") == "requeued 2 failed jobs\n"  # flaky and doomed
    d.ctl("wait", str(flaky))
    # pause, resume, priorities and FIFO within a priority
    d.ok("pause")
    assert d.json("status")["paused_all"]
    low = d.submit("true", opts=("--priority", "0"))
    high = [d.submit("true", opts=("--priority", "5")) for _ in range(3)]
    time.sleep(0.3)
    assert d.job(low)["status"] == "pending"
    d.ok("resume")
    d.ok("wait", str(low), *map(str, high))
    starts = [d.job(i)["started_at"] for i in [*high, low]]
    assert starts == sorted(starts), "priority first, then in the order submitted"
    # delays
    delayed = d.submit("true", opts=("--delay", "1"))
    assert d.job(delayed)["status"] == "pending"
    d.ok("wait", str(delayed))
    assert d.job(delayed)["started_at"] >= d.job(delayed)["run_at"]
    # queue set, queue list, list filters, status
    d.ok("queue", "set", "slow", "--concurrency", "1")
    queues = [json.loads(line) for line in d.ok("--json", "queue", "list").splitlines()]
    [q] = [q for q in queues if q["queue"] == "slow"]
    assert (q["concurrency"], q["concurrency_from"]) == (1, "runtime")
    listed = [json.loads(x) for x in d.ok("--json", "list", "--status", "completed").splitlines()]
    assert listed and all(j["status"] == "completed" for j in listed)
    status = d.json("status")
    assert status["counts"]["completed"] >= 5 and status["writable"]
    # progress from inside a job, seen by show
    script = "phxqctl progress --percent 40 --step half && sleep 30"
    prog = d.submit(
        "sh", "-c", script, opts=("--env", f"PATH={Path(sys.executable).parent}:/usr/bin:/bin")
    )
    until(lambda: (d.job(prog).get("progress") or {}).get("percent") == 40, what="progress")
    d.ok("cancel", str(prog))
    # clear forgets finished jobs and their logs
    assert (tmp_path / "state" / "logs" / f"{first}.log").exists()
    d.ok("clear", "--status", "completed")
    assert d.ctl("show", str(first)).returncode != 0
    assert not (tmp_path / "state" / "logs" / f"{first}.log").exists()
    assert 'phxq_jobs_total{event="submitted",queue="default"}' in d.ok("metrics")
    assert d.stop() == 0


def test_watch_sees_events(pg_uri: str, tmp_path: Path) -> None:
    d = node(tmp_path, pg_uri).start()
    watch = subprocess.Popen(
        [sys.executable, "-m", "phxqctl", "--json", "watch"],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(0.5)  # the watch is listening (nothing tells us when)
        job = d.submit("true")
        d.ok("wait", str(job))
        seen: list[str] = []
        assert watch.stdout is not None
        for line in watch.stdout:
            event = json.loads(line)
            if event.get("id") == job:
                seen.append(event["event"])
            if "completed" in seen:
                break
        assert seen[0] == "submitted" and "completed" in seen
    finally:
        watch.kill()
        watch.wait()


def test_a_restarted_node_reaps_what_it_left_running(
    pg_uri: str, pg_cluster: Cluster, tmp_path: Path
) -> None:
    """kill -9 of the only node: the next phxqd on that state dir kills the leftover and
    fails the attempt (retried by policy), without waiting for the lease."""
    d = node(tmp_path, pg_uri).start()
    job = d.submit("sleep", "60", opts=("--retries", "1"))
    until(lambda: d.job(job)["status"] == "running", what="the job to run")
    pid = d.job(job)["pid"]
    d.kill9()
    assert psutil.pid_exists(pid)
    d.start()
    until(lambda: not psutil.pid_exists(pid), what="the leftover to be killed")
    until(lambda: d.job(job)["attempts"] == 2, what="the job to run again")
    d.ok("cancel", str(job))
    assert (
        pg_cluster.sql(
            "SELECT count(*) FROM phxq_nodes WHERE gone IS NULL", pg_uri.split("/")[3].split("?")[0]
        )
        == "1"
    )
    assert d.stop(signal.SIGTERM) == 0


def test_an_unreachable_store_is_one_line(tmp_path: Path) -> None:
    d = node(tmp_path, f"postgresql:///nothing?host={tmp_path}")
    d.start(expect_ready=False)
    assert d.proc is not None
    assert d.wait(30) == 1
    lines = d.logtext().strip().splitlines()
    assert lines and lines[-1].startswith("phxqd: cannot use the PostgreSQL store:"), lines


def test_schedules_and_rates_on_one_node(pg_uri: str, tmp_path: Path) -> None:
    """Kept in PostgreSQL: the commands answer as on the local journal, and a node
    started again finds them (the rows, not the node, hold them)."""
    d = node(tmp_path, pg_uri).start()
    d.ok("schedule", "add", "nightly", "--cron", "0 3 * * *", "--", "true")
    [listed] = [json.loads(line) for line in d.ok("--json", "schedule", "list").splitlines()]
    assert (listed["name"], listed["source"], listed["paused"]) == ("nightly", "runtime", False)
    assert len(listed["next_fires"]) == 5
    ran = d.json("schedule", "run", "nightly")
    assert ran["key"].startswith("schedule:nightly!run@")
    d.ok("wait", str(ran["id"]))
    show = d.json("schedule", "show", "nightly")
    assert (show["fired"], show["last_job"], show["last_fire"]) == (1, ran["id"], None)
    assert d.json("schedule", "pause", "nightly")["paused"] is True
    d.ok("queue", "set", "q", "--rate", "5/s", "--burst", "2")
    d.stop()
    d.start()
    assert d.json("schedule", "show", "nightly")["paused"] is True
    queues = [json.loads(line) for line in d.ok("--json", "queue", "list").splitlines()]
    [queue] = [q for q in queues if q["queue"] == "q"]
    assert (queue["rate"], queue["burst"], queue["rate_from"]) == (5.0, 2, "runtime")
    d.ok("schedule", "remove", "nightly")
    r = d.ctl("schedule", "show", "nightly")
    assert r.returncode == 4 and "no schedule 'nightly'" in r.stderr
    assert d.ok("--json", "schedule", "list").strip() == ""


def test_a_wait_on_a_batch_returns_what_show_reads(pg_uri: str, tmp_path: Path) -> None:
    """A `wait` on this node gets the rows of the jobs its writer ended with their end
    (not read again): each job as `show` reads it afterwards, results, exit codes, errors,
    attempts and times included, whichever way it ended."""
    from phxqctl import Client
    from phxqd.model import Call, JobSpec

    root = str(Path(__file__).resolve().parent.parent)
    d = node(tmp_path, pg_uri).start()
    with Client(d.socket) as c:
        c.pause()
        specs = [JobSpec(argv=["true"]), JobSpec(argv=["sh", "-c", "exit 3"], max_retries=0)]
        specs += [JobSpec(call=Call("tests.jobs.sample:add", [i, 1]), cwd=root) for i in range(10)]
        specs += [JobSpec(call=Call("tests.jobs.sample:fail", ["no"]), cwd=root, max_retries=0)]
        ids = [r.job.id for r in c.submit_batch(specs * 5)]
        c.resume()
        waited = c.wait(ids)
        assert [j.id for j in waited] == ids
        assert all(j.finished for j in waited)
        assert {j.status for j in waited} == {"completed", "failed"}
        for job in waited:
            assert job == c.get(job.id)
    assert d.stop() == 0


@pytest.mark.parametrize("kind", ["local", "postgresql"])
def test_an_error_text_with_nul_is_stored_escaped(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A callable's exception may say anything, NUL included, and PostgreSQL's text cannot
    hold NUL: its writer retried such an end for ever, and nothing after it was recorded.
    Both backends store the error with each NUL written `\\x00`, and go on."""
    from phxqctl import Client
    from phxqd.model import Call, JobSpec

    root = str(Path(__file__).resolve().parent.parent)
    if kind == "postgresql":
        d = node(tmp_path, request.getfixturevalue("pg_uri")).start()
    else:
        d = Daemon(tmp_path, workers=2).start()
    with Client(d.socket) as c:
        call = Call("tests.jobs.sample:fail_with_nul")
        [bad, after] = [
            r.job.id
            for r in c.submit_batch(
                [JobSpec(call=call, cwd=root, max_retries=0), JobSpec(argv=["true"])]
            )
        ]
        [failed, done] = c.wait([bad, after], timeout=60)
        assert failed.status == "failed" and failed.error == "ValueError: a\\x00b"
        assert done.status == "completed"
        assert c.get(bad).error == failed.error
    assert d.stop() == 0


#: what phxqd logs, once, when its schedules cannot be read or fired, and when they can again
SCHEDULES_CUT_OFF = "schedules cannot be read or fired"
SCHEDULES_BACK = "schedules can be read and fired again"


def until_or_ended(predicate: Callable[[], bool], d: Daemon, timeout: float) -> bool:
    """Until `predicate` holds (True) or phxqd has ended or `timeout` passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if (d.proc is not None and d.proc.poll() is not None) or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def ticking(tmp: Path, pg_uri: str) -> Daemon:
    """A node with a schedule due every second, catching up every fire time it missed."""
    d = node(tmp, pg_uri).start()
    d.ok(
        "schedule", "add", "tick", "--every", "1s", "--catch-up", "all", "--overlap", "allow",
        "--", "true",
    )  # fmt: skip
    return d


#: the pool's wait for a connection (PostgresBackend), which a cut-off node no longer waits
POOL_TIMEOUT = 10.0


def test_a_postgres_outage_holds_the_schedules_and_ends_nothing(
    pg_uri: str, pg_cluster: Cluster, tmp_path: Path
) -> None:
    """PostgreSQL stopped under a node whose `--every 1s` schedule keeps coming due: the
    node stays up, says once that its schedules cannot fire, answers on its socket (a
    one-line refusal), and once PostgreSQL is back fires again, each fire time once (catch-up
    `all`: the times of the outage too, none lost, none doubled)."""
    from tests.test_schedules_daemon import fired, once_each

    d = ticking(tmp_path, pg_uri)
    assert d.proc is not None
    until(lambda: len(fired(d, "tick")) >= 2, 30, "two fire times")
    try:
        pg_cluster.stop("fast")
        noticed = until_or_ended(lambda: SCHEDULES_CUT_OFF in d.logtext(), d, 60)
        assert noticed and d.proc.poll() is None, "phxqd:\n" + d.logtext()
        r = d.ctl("status")
        assert r.returncode == 5 and r.stderr.count("\n") == 1, r
        assert "PostgreSQL cannot be reached" in r.stderr, r.stderr
        # Once the node knows it is cut off, a request no longer waits the pool's whole
        # 10 s for a connection to be refused: CUT_OFF_WAIT.
        until_or_ended(lambda: "no answer from PostgreSQL" in d.logtext(), d, 60)
        asked = time.monotonic()
        r = d.ctl("status")
        took = time.monotonic() - asked
        assert r.returncode == 5 and "PostgreSQL cannot be reached" in r.stderr, r
        assert took < POOL_TIMEOUT / 2, f"refused after {took:.1f}s"
    finally:
        pg_cluster.start()
    back = time.time()
    until(lambda: SCHEDULES_BACK in d.logtext(), 60, "the schedules to fire again")
    until(lambda: max(fired(d, "tick")) > back + 1, 30, "fire times after the outage")
    times = once_each(fired(d, "tick"))
    assert times == [times[0] + k for k in range(len(times))], "every fire time, once"
    log = d.logtext()
    assert log.count(SCHEDULES_CUT_OFF) == 1 and log.count(SCHEDULES_BACK) == 1, log
    assert d.stop() == 0


def test_a_database_set_read_only_refuses_changes_in_one_line_and_ends_nothing(
    pg_uri: str, tmp_path: Path
) -> None:
    """An operator sets the database read-only (maintenance, a standby promoted the wrong
    way round): a change is refused in one line, exit status 5, nothing done; the
    scheduler waits it out (it ended phxqd: the error was no `Refused`); once writable
    again, everything works."""
    import psycopg
    from psycopg import sql

    d = ticking(tmp_path, pg_uri)
    assert d.proc is not None
    database = sql.Identifier(psycopg.conninfo.conninfo_to_dict(pg_uri)["dbname"])
    others = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    with psycopg.connect(pg_uri, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(database)
        )
        admin.execute(others)  # the node's connections come back read-only
        try:
            r = d.ctl("submit", "--", "true")
            assert r.returncode == 5 and r.stderr.count("\n") == 1, r
            assert "read-only transaction" in r.stderr and "nothing was done" in r.stderr, r
            noticed = until_or_ended(lambda: SCHEDULES_CUT_OFF in d.logtext(), d, 60)
            assert noticed and d.proc.poll() is None, "phxqd:\n" + d.logtext()
        finally:
            admin.execute(
                sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(database)
            )
            admin.execute(others)
    until(lambda: SCHEDULES_BACK in d.logtext(), 60, "the schedules to fire again")
    job = d.submit("true")
    assert "completed" in d.ok("wait", str(job))
    assert "Traceback" not in d.logtext(), d.logtext()
