"""Python callable jobs in persistent worker processes, with real crashes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import Daemon, gone, until

ROOT = str(Path(__file__).resolve().parent.parent)


def call(d: Daemon, func: str, *opts: str) -> int:
    out = d.ok("submit", "--cwd", ROOT, "--call", f"tests.jobs.sample:{func}", *opts)
    return int(out)


def test_result_output_and_worker_reuse(daemon: Daemon) -> None:
    first = call(daemon, "add", "--args", "[2, 3]", "--kwargs", '{"scale": 10}')
    daemon.ok("wait", str(first))
    job = daemon.job(first)
    assert job["status"] == "completed" and job["result"]["sum"] == 50
    assert job["call"] == {"func": "tests.jobs.sample:add", "args": [2, 3], "kwargs": {"scale": 10}}
    assert daemon.ok("logs", str(first)) == "adding 2 and 3\n"
    second = call(daemon, "add", "--args", "[1, 1]")
    daemon.ok("wait", str(second))
    assert daemon.job(second)["result"]["pid"] == job["result"]["pid"], "the worker is reused"
    assert "tests.jobs.sample:add(2, 3, scale=10)" in daemon.ok("show", str(first))


def test_exception_fails_the_attempt_with_type_message_and_traceback(daemon: Daemon) -> None:
    job_id = call(daemon, "fail", "--args", '["no such file"]', "--retries", "0")
    assert daemon.ctl("wait", str(job_id)).returncode == 1
    job = daemon.job(job_id)
    assert job["status"] == "failed" and job["error"] == "ValueError: no such file"
    log = daemon.ok("logs", str(job_id))
    assert "Traceback (most recent call last)" in log and "ValueError: no such file" in log

    permanent = call(daemon, "fail_for_good", "--retries", "5")
    assert daemon.ctl("wait", str(permanent)).returncode == 1
    assert daemon.job(permanent)["attempts"] == 1


def test_segfault_and_os_exit_cost_one_attempt_and_one_worker(daemon: Daemon) -> None:
    before = call(daemon, "add", "--args", "[0, 0]")
    daemon.ok("wait", str(before))
    old_pid = daemon.job(before)["result"]["pid"]
    for func, signal_or_code in (("segfault", "SIGSEGV"), ("hard_exit", "status 3")):
        job_id = call(daemon, func, "--retries", "0")
        assert daemon.ctl("wait", str(job_id)).returncode == 1
        error = daemon.job(job_id)["error"]
        assert "the Python worker died" in error and signal_or_code in error, error
    after = call(daemon, "add", "--args", "[1, 2]")
    daemon.ok("wait", str(after))
    assert daemon.job(after)["result"]["sum"] == 3
    assert daemon.job(after)["result"]["pid"] != old_pid
    assert daemon.ctl("status").returncode == 0, "the daemon carries on"


def test_timeout_and_cancel_kill_the_worker(tmp_path: Path, daemon: Daemon) -> None:
    never = str(tmp_path / "never")
    timed = call(
        daemon, "wait_for", "--args", json.dumps([never]), "--timeout", "0.5", "--retries", "0"
    )
    assert daemon.ctl("wait", str(timed)).returncode == 1
    assert "timed out" in daemon.job(timed)["error"]
    cancelled = call(daemon, "wait_for", "--args", json.dumps([never]))
    until(lambda: daemon.job(cancelled)["status"] == "running", what="the call to start")
    worker = psutil.Process(daemon.job(cancelled)["pid"])
    daemon.ok("cancel", str(cancelled))
    until(lambda: gone(worker), what="the worker to be gone")


def test_progress_and_unstorable_results(daemon: Daemon) -> None:
    job_id = call(daemon, "report_progress")
    daemon.ok("wait", str(job_id))
    progress = daemon.job(job_id)["progress"]
    assert (progress["done"], progress["total"], progress["step"]) == (7, 10, "callable")
    bad = call(daemon, "unstorable", "--retries", "0")
    assert daemon.ctl("wait", str(bad)).returncode == 1
    assert "cannot be stored" in daemon.job(bad)["error"]


def test_bad_call_specs_are_usage_errors(daemon: Daemon) -> None:
    assert daemon.ctl("submit", "--call", "nomodule").returncode == 2
    assert daemon.ctl("submit", "--call", "a:b", "--", "echo").returncode == 2
    assert daemon.ctl("submit", "--call", "a:b", "--args", "{}").returncode == 2
    missing = daemon.ok("submit", "--retries", "0", "--call", "no_such_module_xyz:f")
    assert daemon.ctl("wait", missing.strip()).returncode == 1
    assert "ModuleNotFoundError" in daemon.job(int(missing))["error"]


def test_workers_are_recycled_after_max_jobs(tmp_path: Path) -> None:
    d = Daemon(tmp_path, workers=1)
    d.config.write_text("worker_max_jobs = 2\n")
    d.start()
    ids = [call(d, "add", "--args", "[1, 1]") for _ in range(4)]
    d.ok("wait", *map(str, ids))
    pids = [d.job(i)["result"]["pid"] for i in ids]
    assert pids[0] == pids[1] != pids[2] == pids[3]


@pytest.mark.parametrize("kind", ["callable", "command"])
def test_a_kill_grace_changed_by_a_reload_reaches_a_running_job(tmp_path: Path, kind: str) -> None:
    """kill_grace is read when a job is stopped, not when phxqd (or the job) started:
    a Python worker lane's job as much as a command."""
    d = Daemon(tmp_path / "d", workers=1)
    d.config.write_text("kill_grace = 60\n")
    d.start()
    ready, release = tmp_path / "ready", tmp_path / "release"
    try:
        if kind == "callable":
            job_id = call(d, "ignore_sigterm", "--args", json.dumps([str(ready), str(release)]))
        else:
            script = f"trap '' TERM; touch {ready}; while [ ! -e {release} ]; do sleep 0.02; done"
            job_id = d.submit("sh", "-c", script)
        until(ready.exists, what="the job ignoring SIGTERM")
        d.config.write_text("kill_grace = 0.2\n")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        until(lambda: "configuration reloaded" in d.logtext(), what="the reload")
        began = time.monotonic()
        try:  # answered once the job's end is durable
            cancel = d.ctl("cancel", str(job_id), timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the cancel waited for the old kill_grace (60 s)")
        elapsed = time.monotonic() - began
        assert cancel.returncode == 0, cancel.stderr
    finally:
        release.touch()  # whatever happened, the job may end now
    job = d.job(job_id)
    assert job["status"] == "cancelled", job
    assert "SIGKILL" in job["error"], job["error"]
    assert elapsed < 20, f"killed {elapsed:.1f}s after the cancel: the old grace was used"
