"""Worker lanes: jobs sent ahead to a Python worker, with real workers and real crashes.

The lane tests push several jobs into one lane at once, so the jobs are certainly queued
in the worker behind the running one (the dispatcher does that only while jobs are quick,
which a test cannot rely on); the daemon test checks the same through the dispatcher.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from phxqctl import Client
from phxqd.model import Call, Job
from phxqd.run import attempt
from phxqd.run.lanes import Ended, Report, Start, WorkerPool
from tests.conftest import Daemon, settings_in

ROOT = str(Path(__file__).resolve().parent.parent)


def make_job(job_id: int, func: str, *args: object) -> Job:
    now = time.time()
    return Job(
        job_id, (), "default", 0, "pending", now, now, cwd=ROOT,
        call=Call(f"tests.jobs.sample:{func}", list(args)),
    )  # fmt: skip


class Harness:
    """A WorkerPool whose reports are collected, with one lane holding `jobs`."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.reports: list[Report] = []
        settings = settings_in(logs, logs_dir=logs, workers=1, kill_grace=1.0)
        self.pool = WorkerPool(settings, report=self.reports.extend)
        self.stops: dict[int, attempt.Stop] = {}

    def push(self, jobs: list[Job]) -> None:
        lane = self.pool.lane_with_room(time.monotonic()) or self.pool.new_lane(
            self.logs / f"{jobs[0].id}.log"
        )
        for job in jobs:
            self.stops[job.id] = attempt.Stop()
            lane.push(self.pool.ticket(job, self.stops[job.id], self.logs / f"{job.id}.log"))
        lane.flush()

    def ended(self, job_id: int) -> Ended:
        [end] = [r for r in self.reports if isinstance(r, Ended) and r.job.id == job_id]
        return end

    def starts(self, job_id: int) -> list[Start]:
        return [r for r in self.reports if isinstance(r, Start) and r.job.id == job_id]


async def run_lane(h: Harness, jobs: list[Job]) -> None:
    h.push(jobs)
    [lane] = h.pool.lanes
    with anyio.fail_after(30):
        await lane.run()
    h.pool.close()


def test_a_crash_fails_the_running_job_only_and_the_jobs_sent_ahead_run_unspent(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    jobs = [
        make_job(1, "add", 1, 1),
        make_job(2, "segfault"),
        make_job(3, "add", 2, 2),
        make_job(4, "add", 3, 3),
    ]
    anyio.run(run_lane, h, jobs)

    crashed = h.ended(2)
    assert crashed.started and crashed.outcome.error is not None
    assert "the Python worker died" in crashed.outcome.error
    assert "SIGSEGV" in crashed.outcome.error
    results = {}
    for job_id in (1, 3, 4):
        end = h.ended(job_id)
        assert end.started and end.outcome.error is None, end
        results[job_id] = end.outcome.result
        assert len(h.starts(job_id)) == 1, "each started once: no attempt spent twice"
    assert len(h.starts(2)) == 1
    assert results[3]["sum"] == 4 and results[4]["sum"] == 6
    assert results[1]["pid"] != results[3]["pid"] == results[4]["pid"], "a fresh worker"
    assert (tmp_path / "3.log").read_text() == "adding 2 and 2\n"


def test_a_cancelled_job_sent_ahead_is_taken_back_without_running(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    flag = tmp_path / "go"
    jobs = [make_job(1, "wait_for", str(flag)), make_job(2, "add", 5, 5), make_job(3, "add", 1, 2)]

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_lane, h, jobs)
            with anyio.fail_after(30):
                while not h.starts(1):
                    await anyio.sleep(0.01)
                h.stops[2].request("cancelled")
                while not any(isinstance(r, Ended) and r.job.id == 2 for r in h.reports):
                    await anyio.sleep(0.01)
            flag.touch()

    anyio.run(main)
    skipped = h.ended(2)
    assert not skipped.started and h.starts(2) == [], "it never ran"
    assert not (tmp_path / "2.log").exists()
    assert h.ended(1).outcome.error is None and h.ended(3).outcome.result["sum"] == 3
    assert h.ended(1).outcome.result is None
    assert h.ended(3).outcome.result["pid"] == h.starts(1)[0].pid, "the same worker"


def test_a_timeout_kills_the_worker_and_the_jobs_behind_it_run_on_a_new_one(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    slow = make_job(1, "wait_for", str(tmp_path / "never"))
    slow.timeout = 0.3
    anyio.run(run_lane, h, [slow, make_job(2, "add", 1, 1)])
    timed_out = h.ended(1).outcome
    assert timed_out.error is not None and "timed out" in timed_out.error
    assert h.ended(2).outcome.result["pid"] != h.starts(1)[0].pid
    assert len(h.starts(2)) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_a_crash_among_many_quick_jobs_costs_one_attempt(tmp_path: Path, workers: int) -> None:
    d = Daemon(tmp_path, workers=workers).start()
    specs = [{"call": {"func": "tests.jobs.sample:add", "args": [i, 1]}} for i in range(60)]
    specs.insert(30, {"call": {"func": "tests.jobs.sample:segfault"}})
    lines = "".join(json.dumps({**s, "cwd": ROOT, "max_retries": 0}) + "\n" for s in specs)
    ids = [int(line) for line in d.ok("submit", "--batch", "-", input=lines).split()]
    with Client(d.socket) as c:
        jobs = c.wait(ids)
    assert [j.status for j in jobs].count("failed") == 1
    assert jobs[30].status == "failed" and "SIGSEGV" in (jobs[30].error or "")
    assert all(j.attempts == 1 for j in jobs)
    assert all(j.result["sum"] == i + 1 for i, j in enumerate(jobs[:30] + jobs[31:]))


def test_the_worker_child_imports_only_the_standard_library_and_msgspec() -> None:
    """It runs under the configured interpreter, which has nothing of phxq's installed:
    of phxqd it may import only itself and `phxqd.run.output` (standard library only)."""
    code = (
        "import sys; before = set(sys.modules); import phxqd.run.child; "
        "print(*sorted(set(sys.modules) - before))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    ours = {m for m in loaded if m.split(".")[0] == "phxqd"}
    assert ours == {"phxqd", "phxqd.run", "phxqd.run.child", "phxqd.run.output"}
    others = {m.split(".")[0] for m in loaded - ours}
    assert others - set(sys.stdlib_module_names) <= {"msgspec", "typing_extensions"}  # msgspec's
