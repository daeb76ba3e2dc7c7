"""A job that ignores SIGTERM ends by SIGKILL, `kill_grace` after the SIGTERM, however it is
stopped: cancelled, timed out, or by the daemon stopping. Its whole process group goes,
a child that inherited the ignored SIGTERM included. Without the SIGKILL these jobs would
run forever: each test bounds its wait so that such a bug fails it instead of hanging."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import Daemon, gone, until

ROOT = str(Path(__file__).resolve().parents[1])
GRACE = 0.5
#: what the test allows beyond `kill_grace`: many periods of anything phxqd does on the way
#: (a loaded 2-core machine); a missing SIGKILL never ends, so no margin lets it pass
MARGIN = 25.0

#: ignores SIGTERM, starts a child that inherits that (SIG_IGN survives exec), writes both
#: pids, and runs until killed
STUBBORN = """
import json, os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "600"])
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump([os.getpid(), child.pid], f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(0.05)
"""


def gone_pid(pid: int) -> bool:
    try:
        return gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def start_stubborn(d: Daemon, tmp: Path, kind: str, *opts: str) -> tuple[int, list[int]]:
    """A stubborn job, running, and the pids that must end with it."""
    pids = tmp / "pids"
    if kind == "command":
        job = d.submit(sys.executable, "-c", STUBBORN, str(pids), opts=opts)
        until(pids.exists, what="the job to start")
        return job, json.loads(pids.read_text())
    out = d.ok(
        "submit", "--cwd", ROOT, *opts, "--call", "tests.jobs.sample:stubborn",
        "--args", json.dumps([str(pids)]),
    )  # fmt: skip
    job = int(out)
    until(pids.exists, what="the job to start")
    return job, [d.job(job)["pid"]]


def stubborn_daemon(tmp: Path) -> Daemon:
    d = Daemon(tmp / "d", workers=1)
    d.config.write_text(f"kill_grace = {GRACE}\nshutdown_grace = 0\n")
    return d.start()


@pytest.mark.parametrize("kind", ["command", "callable"])
def test_cancel_kills_a_job_that_ignores_sigterm(tmp_path: Path, kind: str) -> None:
    d = stubborn_daemon(tmp_path)
    job, pids = start_stubborn(d, tmp_path, kind)
    began = time.monotonic()
    r = d.ctl("cancel", str(job), timeout=GRACE + MARGIN)  # answered once the job is gone
    took = time.monotonic() - began
    assert r.returncode == 0, r.stderr
    assert took >= GRACE, f"cancelled after {took:.2f}s: SIGTERM ended a job that ignores it"
    assert [p for p in pids if not gone_pid(p)] == []
    shown = d.job(job)
    assert shown["status"] == "cancelled", shown
    assert "SIGKILL" in shown["error"], shown["error"]


@pytest.mark.parametrize("kind", ["command", "callable"])
def test_a_timeout_kills_a_job_that_ignores_sigterm(tmp_path: Path, kind: str) -> None:
    d = stubborn_daemon(tmp_path)
    job, pids = start_stubborn(d, tmp_path, kind, "--timeout", "1", "--retries", "0")
    r = d.ctl("wait", str(job), timeout=1 + GRACE + MARGIN)
    assert r.returncode == 1, r.stdout + r.stderr
    assert [p for p in pids if not gone_pid(p)] == []
    shown = d.job(job)
    assert shown["status"] == "failed", shown
    assert shown["error"].startswith("timed out after 1s"), shown["error"]
    assert "SIGKILL" in shown["error"] or "signal 9" in shown["error"], shown["error"]
    took = shown["finished_at"] - shown["started_at"]
    assert took >= 1 + GRACE, f"ended {took:.2f}s after it started: before the SIGKILL was due"


@pytest.mark.parametrize("kind", ["command", "callable"])
def test_a_daemon_stop_kills_a_job_that_ignores_sigterm(tmp_path: Path, kind: str) -> None:
    d = stubborn_daemon(tmp_path)
    _job, pids = start_stubborn(d, tmp_path, kind)
    began = time.monotonic()
    assert d.stop(signal.SIGTERM, timeout=GRACE + MARGIN) == 0, d.logtext()
    took = time.monotonic() - began
    assert took >= GRACE, f"stopped after {took:.2f}s: SIGTERM ended a job that ignores it"
    assert [p for p in pids if not gone_pid(p)] == []
