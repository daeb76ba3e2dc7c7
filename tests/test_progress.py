"""Progress from inside jobs: shell and Python, shown at once, checkpointed sparingly."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import Daemon, until

CTL = f"{sys.executable} -m phxqctl"


def test_shell_job_progress_is_shown_at_once_and_survives_restart(
    tmp_path: Path, daemon: Daemon
) -> None:
    go = tmp_path / "go"
    script = (
        f"{CTL} progress --percent 40 --step resizing --done 4 --total 10 && "
        f"while [ ! -e {go} ]; do sleep 0.02; done"
    )
    job_id = daemon.submit("sh", "-c", script)
    progress = until(lambda: daemon.job(job_id)["progress"], what="the progress report")
    assert progress["percent"] == 40 and progress["step"] == "resizing"
    assert (progress["done"], progress["total"]) == (4, 10)
    status = daemon.ok("status")
    assert "[########............]  40%  4/10  resizing" in status
    assert "40%" in daemon.ok("show", str(job_id))
    go.touch()
    daemon.ok("wait", str(job_id))
    daemon.kill9()
    daemon.start()
    assert daemon.job(job_id)["progress"]["step"] == "resizing"


def test_python_progress_merges_fields_and_is_checkpointed_sparingly(daemon: Daemon) -> None:
    code = (
        "import phxqctl\n"
        "phxqctl.progress(done=3, total=10, step='first')\n"
        "for i in range(300):\n"
        "    assert phxqctl.progress(done=i, total=300)\n"
        "phxqctl.progress(step='last')\n"
    )
    before = daemon.json("status")["journal"]["records"]
    job_id = daemon.submit(sys.executable, "-c", code)
    daemon.ok("wait", str(job_id))
    job = daemon.job(job_id)
    assert job["progress"]["done"] == 299 and job["progress"]["total"] == 300
    assert job["progress"]["step"] == "last", "fields not given keep their value"
    written = daemon.json("status")["journal"]["records"] - before
    # submit + start + end, plus about one checkpoint a second: not 302 progress records
    assert written < 20, written


def test_progress_outside_a_job_is_a_usage_error(daemon: Daemon) -> None:
    r = daemon.ctl("progress", "--percent", "5")
    assert r.returncode == 2 and "not inside a phxq job" in r.stderr
    assert r.stderr.count("\n") == 1
    env_job = daemon.submit(
        sys.executable, "-m", "phxqctl", "progress", "--percent", "101", opts=("--retries", "0")
    )
    assert daemon.ctl("wait", str(env_job)).returncode == 1  # refused: exit 2 inside the job
    assert "between 0 and 100" in daemon.ok("logs", str(env_job))
