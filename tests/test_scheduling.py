"""Scheduling through the real daemon: priorities, queues, dependencies, retry rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import Daemon, until


def order_recorder(log: Path) -> tuple[str, ...]:
    return ("sh", "-c", f"echo $PHXQ_JOB_ID >> {log}")


def test_priority_then_fifo(tmp_path: Path) -> None:
    d = Daemon(tmp_path, workers=1).start()
    log = tmp_path / "order"
    d.ok("pause")
    low1 = d.submit(*order_recorder(log))
    high1 = d.submit(*order_recorder(log), opts=("--priority", "5"))
    low2 = d.submit(*order_recorder(log))
    high2 = d.submit(*order_recorder(log), opts=("--priority", "5"))
    d.ok("resume")
    d.ok("wait", str(low1), str(low2), str(high1), str(high2))
    assert [int(x) for x in log.read_text().split()] == [high1, high2, low1, low2]


def test_queue_concurrency_set_at_run_time_and_kept(tmp_path: Path) -> None:
    d = Daemon(tmp_path, workers=3).start()
    running, seen = tmp_path / "running", tmp_path / "seen"
    running.mkdir()
    out = json.loads(d.ok("--json", "queue", "set", "img", "--concurrency", "1").splitlines()[0])
    assert out == {
        "queue": "img",
        "counts": out["counts"],
        "concurrency": 1,
        "concurrency_from": "runtime",
        "paused": False,
        "active": 0,
        "rate": None,
        "burst": None,
        "rate_from": None,
        "next_start": None,
    }
    script = (
        f"touch {running}/$PHXQ_JOB_ID; ls {running} | wc -l >> {seen}; sleep 0.1; "
        f"rm {running}/$PHXQ_JOB_ID"
    )
    ids = [d.submit("sh", "-c", script, opts=("--queue", "img")) for _ in range(4)]
    d.ok("wait", *map(str, ids))
    assert max(int(x) for x in seen.read_text().split()) == 1
    assert limit_shown(d, "img") == "1*"
    d.kill9()
    d.start()
    assert limit_shown(d, "img") == "1*", "a run-time limit survives a restart"
    d.ok("queue", "set", "img", "--concurrency", "default")
    assert limit_shown(d, "img") == "-"
    assert d.ctl("queue", "set", "img", "--concurrency", "0").returncode == 2


def test_after_runs_when_dependencies_completed(tmp_path: Path, daemon: Daemon) -> None:
    go = tmp_path / "go"
    first = daemon.submit("sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done")
    second = daemon.submit("true", opts=("--after", str(first)))
    until(lambda: daemon.job(first)["status"] == "running", what="the first job to start")
    assert daemon.job(second)["status"] == "pending"
    assert re.search(rf"^\s*after\s+{first}$", daemon.ok("show", str(second)), re.M)
    go.touch()
    daemon.ok("wait", str(second))
    job = daemon.job(second)
    assert job["status"] == "completed" and job["started_at"] >= daemon.job(first)["finished_at"]


def test_failed_dependency_cancels_dependents_in_a_chain(daemon: Daemon) -> None:
    root = daemon.submit("false", opts=("--retries", "0", "--delay", "1h"))
    child = daemon.submit("true", opts=("--after", str(root)))
    grandchild = daemon.submit("true", opts=("--after", f"{child}"))
    daemon.ok("cancel", str(root))
    r = daemon.ctl("wait", str(child), str(grandchild))
    assert r.returncode == 1
    assert daemon.job(child)["status"] == "cancelled"
    assert f"job {root}" in daemon.job(child)["error"]
    assert daemon.job(grandchild)["status"] == "cancelled"
    assert daemon.ctl("submit", "--after", str(root), "--", "true").returncode == 5
    assert daemon.ctl("submit", "--after", "999", "--", "true").returncode == 4
    assert daemon.ctl("retry", str(child)).returncode == 5  # its dependency first


def test_exit_100_fails_at_once_and_backoff_is_settable(daemon: Daemon) -> None:
    dead = daemon.submit("sh", "-c", "exit 100", opts=("--retries", "5"))
    assert daemon.ctl("wait", str(dead)).returncode == 1
    job = daemon.job(dead)
    assert job["status"] == "failed" and job["attempts"] == 1 and "no retries" in job["error"]

    quick = daemon.submit(
        "sh", "-c", 'test "$PHXQ_ATTEMPT" -ge 3', opts=("--retries", "3", "--backoff", "0.01")
    )
    daemon.ok("wait", str(quick))
    job = daemon.job(quick)
    assert job["attempts"] == 3 and job["backoff"] == [0.01, 60.0, 0.5]
    assert daemon.ctl("submit", "--backoff", "5s,1s", "--", "true").returncode == 2


def test_status_reports_throughput_and_average(daemon: Daemon) -> None:
    ids = [daemon.submit("true") for _ in range(3)]
    daemon.ok("wait", *map(str, ids))
    status = daemon.json("status")
    assert status["throughput_per_minute"] >= 3
    assert status["average_seconds"] is not None and status["average_seconds"] >= 0
    assert "last minute: " in daemon.ok("status")


def test_retention_forgets_finished_jobs_and_their_logs(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.config.write_text("retention = 0.5\n")
    d.start()
    done = d.submit("echo", "old news")
    d.ok("wait", str(done))
    log = d.state_dir / "logs" / f"{done}.log"
    assert log.exists()
    waiting = d.submit("true", opts=("--delay", "1h"))
    until(lambda: d.ctl("show", str(done)).returncode == 4, what="the finished job to expire")
    assert not log.exists()
    assert d.job(waiting)["status"] == "pending", "retention never touches live jobs"


def test_at_with_an_offset_or_local_time_and_shown_as_waiting(daemon: Daemon) -> None:
    import datetime as dt

    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    with_offset = later.astimezone(dt.timezone(dt.timedelta(hours=5))).isoformat()
    local = later.astimezone().replace(tzinfo=None).isoformat(timespec="seconds")
    a = daemon.submit("true", opts=("--at", with_offset))
    b = daemon.submit("true", opts=("--at", local))
    for job_id in (a, b):
        assert abs(daemon.job(job_id)["run_at"] - later.timestamp()) < 2
    listing = daemon.ok("list")
    # "in 1h59m" or "in 2h00m": the local form is whole seconds, so it may round down
    assert len(re.findall(r"pending \(in (1h59m|2h00m)\)", listing)) == 2, listing
    assert daemon.ctl("submit", "--at", "tomorrow", "--", "true").returncode == 2


def limit_shown(d: Daemon, queue: str) -> str:
    """The LIMIT column of `phxqctl queue list` for this queue."""
    [row] = [
        line.split() for line in d.ok("queue", "list").splitlines() if line.split()[0] == queue
    ]
    return row[1]


def test_pauses_at_once_while_commands_spawn_are_all_answered(tmp_path: Path) -> None:
    """A pause is answered once the commands handed out before it have started (none may
    start after the answer). Two queues' pauses and resumes in two threads meet commands
    in their spawn all the time: each pause must be answered. (Each waiter once had an
    event of its own, which the next replaced: the first then waited for ever.)"""
    import threading

    from phxqctl import Client
    from phxqd.protocol import JobSpec

    d = Daemon(tmp_path, workers=4).start()
    rounds = 40
    with Client(d.socket, timeout=60) as c:
        for q in ("a", "b"):
            c.submit_batch([JobSpec(argv=["true"], queue=q) for _ in range(1500)])
    done: list[str] = []
    failed: list[BaseException] = []

    def toggle(queue: str) -> None:
        try:
            with Client(d.socket, timeout=60) as c:
                for _ in range(rounds):
                    assert queue in c.pause(queue)["paused"]
                    c.resume(queue)
            done.append(queue)
        except BaseException as e:  # reported by the test, not lost in the thread
            failed.append(e)

    threads = [threading.Thread(target=toggle, args=(q,)) for q in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failed, failed
    assert sorted(done) == ["a", "b"], f"a pause was never answered: {done}"
    status = d.json("status")
    assert status["paused"] == [] and status["paused_all"] is False
